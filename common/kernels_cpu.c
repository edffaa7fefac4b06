/*
 * kernels_cpu.c - the model's computations in plain C: the specification.
 *
 * Each function is the twin of a CUDA kernel in kernels_cuda.cu, which keeps
 * these comments so that a diff of the two shows only the parallelisation.
 * The linear layer, nearly all of the arithmetic, comes twice: as the formulas
 * read (the reference, kernels_cpu_naive) and tiled, the same sums kept in
 * vector registers (kernels_cpu). Outside the reference every inner loop runs
 * over contiguous memory, so that the compiler vectorises it as written (without
 * -ffast-math). The CPU computes with subnormal floats flushed to zero.
 *
 * Shapes: B batch rows, C input features, OC output features, N elements.
 * APIs: kernels_cpu, kernels_cpu_naive.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <pmmintrin.h> // _MM_DENORMALS_ZERO_ON
#include <xmmintrin.h> // _mm_getcsr, _mm_setcsr, _MM_FLUSH_ZERO_ON
#endif

#include "check.h"
#include "kernels.h"

// ----------------------------------------------------------------------------
// floating-point environment: subnormals flushed to zero
//
// Floats below FLT_MIN (1.2e-38) are subnormal: they give up precision to get closer to 0,
// and many CPUs compute with them through a slow path (on x86, a microcode assist of the
// order of a hundred cycles for an instruction that meets one). Adam's first moment m (and
// SGD's velocity) of a parameter whose gradient is exactly 0, behind a ReLU that never fires,
// decays by 0.9 a step, reaches them within a thousand steps and stays there: 0.9 times one
// of the four smallest subnormals rounds back to itself. Flush-to-zero writes such results
// as 0 and denormals-are-zero reads such inputs as 0, as torch.set_flush_denormal(True) and
// CUDA's -ftz=true do. Both are settings of the thread that computes, which the threads it
// creates and the processes it forks afterwards inherit. (Lesson 01's README: what it costs.)

// Sets flush-to-zero and denormals-are-zero for the calling thread, where the CPU has them.
static void flush_subnormals_to_zero(void) {
#if defined(__x86_64__)
    _mm_setcsr(_mm_getcsr() | _MM_FLUSH_ZERO_ON | _MM_DENORMALS_ZERO_ON); // MXCSR bits 15, 6
#elif defined(__aarch64__)
    uint64_t fpcr; // FPCR.FZ, bit 24: both, in single and double precision
    __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
    __asm__ volatile("msr fpcr, %0" : : "r"(fpcr | (UINT64_C(1) << 24)));
#endif
}

// ----------------------------------------------------------------------------
// memory: the CPU's memory is host memory

static void* alloc_cpu(size_t bytes) {
    // Every buffer of a computation comes from here first: the table's first use in the
    // thread that computes, where it sets that thread's floating-point mode.
    flush_subnormals_to_zero();
    // Aligned to a cache line, so that vector loads never straddle two and every
    // process gets the same speed; zeroed, as the GPU's alloc is.
    size_t rounded = (bytes + 63) / 64 * 64;
    void* ptr = aligned_alloc(64, rounded > 0 ? rounded : 64);
    if (ptr == NULL)
        check_report(__FILE__, __LINE__, "aligned_alloc", "out of memory");
    else
        memset(ptr, 0, rounded);
    return ptr;
}

static void release_cpu(void* ptr) {
    free(ptr);
}

static int copy_cpu(void* dst, const void* src, size_t bytes) {
    memcpy(dst, src, bytes);
    return 0;
}

static int zero_cpu(void* ptr, size_t bytes) {
    memset(ptr, 0, bytes);
    return 0;
}

static int synchronize_cpu(void) {
    return 0;
}

// ----------------------------------------------------------------------------
// data

static int gather_batch_cpu(float* x, float* y, const float* data_x, const float* data_y,
                            const int* indices, int B) {
    for (int b = 0; b < B; b++) {
        x[b] = data_x[indices[b]];
        y[b] = data_y[indices[b]];
    }
    return 0;
}

// ----------------------------------------------------------------------------
// linear layer: the reference
//
// The layer's three products as the formulas read, one running sum per output that adds its
// terms in index order. This is what the layer computes; the tiled versions below compute the
// same sums faster, and tests/test_kernels.c checks them against these on awkward shapes.

static int linear_forward_naive(float* out, const float* inp, const float* w, const float* bias,
                                int B, int C, int OC) {
    // out[b][o] = bias[o] + sum over i of inp[b][i] * w[o][i]
    for (int b = 0; b < B; b++)
        for (int o = 0; o < OC; o++) {
            float sum = 0.0f;
            for (int i = 0; i < C; i++)
                sum += inp[(size_t)b * C + i] * w[(size_t)o * C + i];
            out[(size_t)b * OC + o] = bias[o] + sum;
        }
    return 0;
}

static int linear_backward_naive(float* dinp, float* dw, float* dbias, const float* dout,
                                 const float* inp, const float* w, int B, int C, int OC) {
    // dbias[o] = sum over b of dout[b][o]
    for (int o = 0; o < OC && dw != NULL; o++) {
        float sum = 0.0f;
        for (int b = 0; b < B; b++)
            sum += dout[(size_t)b * OC + o];
        dbias[o] = sum;
    }
    // dw[o][i] = sum over b of dout[b][o] * inp[b][i]
    for (int o = 0; o < OC && dw != NULL; o++)
        for (int i = 0; i < C; i++) {
            float sum = 0.0f;
            for (int b = 0; b < B; b++)
                sum += dout[(size_t)b * OC + o] * inp[(size_t)b * C + i];
            dw[(size_t)o * C + i] = sum;
        }
    // dinp[b][i] = sum over o of dout[b][o] * w[o][i]
    for (int b = 0; b < B && dinp != NULL; b++)
        for (int i = 0; i < C; i++) {
            float sum = 0.0f;
            for (int o = 0; o < OC; o++)
                sum += dout[(size_t)b * OC + o] * w[(size_t)o * C + i];
            dinp[(size_t)b * C + i] = sum;
        }
    return 0;
}

// ----------------------------------------------------------------------------
// linear layer: tiled
//
// The three products have one shape: each row of the output is a weighted sum of the rows of
// a matrix b,
//     out[r][c] = sum over k of a[r][k] * b[k][c],
// with a = dout, b = w for dinp; a = dout read down its columns, b = inp for dw; and for the
// forward pass a = inp, b = w transposed. The innermost loop runs along c, over contiguous
// memory: one vector operation per k, a[r][k] broadcast to every lane. Each output keeps one
// running sum that adds its terms in k order, as the reference does, so no pragma has to
// allow reordering, and the results do not depend on the vector width.

// The build target's vector registers (the compilers define these macros from -march): how
// many floats one holds, and how many there are. Where none is known, SSE2's or NEON's.
#if defined(__AVX512F__)
#define SIMD_FLOATS 16
#define SIMD_REGISTERS 32
// GCC's tuning for many AVX-512 CPUs (-march=native on Ice Lake, Rocket Lake, Sapphire
// Rapids) prefers 256-bit vectors: it would split each 16-float half of a tile's row in
// two and spill the tile's sums to the stack. This asks for 512-bit ones in the code below
// (on a 2-core Rocket Lake guest, lesson 01 went from 1.76 to 1.31 ms per epoch). Clang
// has no such pragma: build with CFLAGS="-O3 -march=native -mprefer-vector-width=512".
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")
#endif
#elif defined(__AVX__)
#define SIMD_FLOATS 8
#define SIMD_REGISTERS 16
#elif defined(__aarch64__)
#define SIMD_FLOATS 4
#define SIMD_REGISTERS 32
#else
#define SIMD_FLOATS 4
#define SIMD_REGISTERS 16
#endif

// A tile of outputs held in vector registers while k runs: rows of 2 vectors, in half of the
// registers (8 running sums with AVX2, 16 with AVX-512), which leaves the other half for the
// operands. 8 or more independent sums keep both FMA units busy through their 4-cycle
// latency. Each k loads 2 vectors of b and TILE_ROWS scalars of a for 2 x TILE_ROWS fused
// multiply-adds, and the tile is stored once, at the end.
#define TILE_ROWS (SIMD_REGISTERS / 4)
#define TILE_COLS (2 * SIMD_FLOATS)
// The forward pass copies w transposed, KC of its columns at a time, into a panel of
// KC x TILE_COLS floats on the stack that stays in the L1 cache while every row tile uses it.
#define KC 256

static inline int min_int(int a, int b) {
    return a < b ? a : b;
}

// out (rows, TILE_COLS) = a (rows, K) @ b (K, TILE_COLS) [+ bias (TILE_COLS)], for
// rows <= TILE_ROWS, where a[r][k] = a[r * a_row + k * a_k], b's row k is two vectors, at
// b + k * b_row and b_half floats further (SIMD_FLOATS further in a row-major b), and out's
// rows are out_stride apart; with accumulate, the sums start from out's values, not from 0.
static void linear_tile(float* restrict out, size_t out_stride, const float* restrict bias,
                        bool accumulate, const float* restrict a, size_t a_row, size_t a_k,
                        const float* restrict b, size_t b_row, size_t b_half, int rows, int K) {
    // K >= 1. Tile rows past the last real one repeat it, so that every loop below has a
    // constant trip count and the compiler can keep acc in registers; they are never stored.
    const float* a_r[TILE_ROWS];
    for (int r = 0; r < TILE_ROWS; r++)
        a_r[r] = a + min_int(r, rows - 1) * a_row;
    // The first term (k = 0) goes in with the starting values (a zero-filled acc would be
    // filled in memory, and then loaded, a large part of a short tile's time).
    float acc[TILE_ROWS][TILE_COLS];
    for (int r = 0; r < TILE_ROWS; r++) {
        const float* start = out + min_int(r, rows - 1) * out_stride;
        float a_r0 = a_r[r][0];
        // The pragma, as in the loop over k: without it GCC vectorised this loop across the
        // rows instead, gathering a_r[r][0] and shuffling the products into place, a third
        // of the time of dw's tiles (K = B = 32).
#pragma omp simd
        for (int c = 0; c < SIMD_FLOATS; c++) {
            acc[r][c] = (accumulate ? start[c] : 0.0f) + a_r0 * b[c];
            acc[r][SIMD_FLOATS + c] =
                (accumulate ? start[SIMD_FLOATS + c] : 0.0f) + a_r0 * b[b_half + c];
        }
    }
    for (int k = 1; k < K; k++) {
        const float* b_k = b + k * b_row;
        for (int r = 0; r < TILE_ROWS; r++) {
            float a_rk = a_r[r][k * a_k];
            // No reduction: each element of acc is a sum of its own. The pragma says that the
            // lanes are independent; without it GCC keeps acc in memory, not registers.
#pragma omp simd
            for (int c = 0; c < SIMD_FLOATS; c++) {
                acc[r][c] += a_rk * b_k[c];
                acc[r][SIMD_FLOATS + c] += a_rk * b_k[b_half + c];
            }
        }
    }
    for (int r = 0; r < TILE_ROWS; r++)
        for (int c = 0; c < TILE_COLS && r < rows; c++)
            out[r * out_stride + c] = bias != NULL ? bias[c] + acc[r][c] : acc[r][c];
}

// out (rows, cols) = a (rows, K) @ b (K, cols) [+ bias (cols)], a[r][k] = a[r * a_row + k * a_k].
static void matmul_cpu(float* restrict out, const float* restrict bias, const float* restrict a,
                       size_t a_row, size_t a_k, const float* restrict b, int rows, int K,
                       int cols) {
    // One term per output (the first layer's forward pass, the last layer's dinp): an outer
    // product, a row at a time. A tile would spend its time filling and storing (12x slower).
    if (K == 1) {
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < cols; j++) {
                float term = a[r * a_row] * b[j];
                out[(size_t)r * cols + j] = bias != NULL ? bias[j] + term : term;
            }
        return;
    }
    int c = 0;
    // Column tiles outside, row tiles inside: the K x TILE_COLS piece of b that a column
    // tile reads stays in the L1 cache for all of its row tiles. A single row (the last
    // layer's dw) is faster a row at a time than in a tile of mostly repeated rows.
    for (; c + TILE_COLS <= cols && rows > 1 && K > 0; c += TILE_COLS)
        for (int r = 0; r < rows; r += TILE_ROWS)
            linear_tile(out + (size_t)r * cols + c, cols, bias != NULL ? bias + c : NULL, false,
                        a + r * a_row, a_row, a_k, b + c, cols, SIMD_FLOATS,
                        min_int(TILE_ROWS, rows - r), K);
    // The rest a row at a time: the row's running sums live in out (in the L1 cache) and each
    // k adds a scaled piece of b's row k along it, contiguous, in k order as in the tiles.
    for (int r = 0; r < rows && c < cols; r++) {
        float* out_r = out + (size_t)r * cols;
        for (int j = c; j < cols; j++)
            out_r[j] = 0.0f;
        for (int k = 0; k < K; k++) {
            float a_rk = a[r * a_row + k * a_k];
            for (int j = c; j < cols; j++)
                out_r[j] += a_rk * b[(size_t)k * cols + j];
        }
        for (int j = c; j < cols && bias != NULL; j++)
            out_r[j] = bias[j] + out_r[j];
    }
}

// part[0] + ... + part[SIMD_FLOATS - 1] as a tree: the upper half of the lanes is added to
// the lower half until one lane is left (for a vector, a shuffle and an add per level).
static inline float sum_lanes(float part[SIMD_FLOATS]) {
    for (int half = SIMD_FLOATS / 2; half > 0; half /= 2)
        for (int l = 0; l < half; l++)
            part[l] += part[l + half];
    return part[0];
}

// sum over i < n of a[i] * b[i]
static inline float dot_cpu(const float* restrict a, const float* restrict b, int n) {
    // One running sum cannot use the vector lanes: each addition waits for the one before,
    // and the compiler may not reorder them. Here lane l adds the terms l, l + SIMD_FLOATS,
    // ... in order (the last, shorter stretch goes into the first lanes), and sum_lanes adds
    // the lanes up: an order written down, not left to the compiler. (`omp simd reduction`
    // lets GCC choose, and it added the 16 lanes one by one through memory: 6x slower.)
    float part[SIMD_FLOATS] = {0};
    int i = 0;
    for (; i + SIMD_FLOATS <= n; i += SIMD_FLOATS)
        for (int l = 0; l < SIMD_FLOATS; l++)
            part[l] += a[i + l] * b[i + l];
    for (int l = 0; i + l < n; l++)
        part[l] += a[i + l] * b[i + l];
    return sum_lanes(part);
}

// panel (2, kc, SIMD_FLOATS) = the first kc columns of w's TILE_COLS rows (row stride C),
// transposed, in two halves: panel[h][k][l] = w[h * SIMD_FLOATS + l][k].
static void pack_transposed(float* restrict panel, const float* restrict w, int C, int kc) {
    // Each k interleaves SIMD_FLOATS rows of w into one register's width of the panel: the
    // compiler turns such a group of stores into vector loads and shuffles. (A panel row as
    // wide as the tile, two registers, it copies a float at a time, about 4x slower.)
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < kc; k++)
            for (int l = 0; l < SIMD_FLOATS; l++)
                panel[((size_t)h * kc + k) * SIMD_FLOATS + l] =
                    w[(size_t)(h * SIMD_FLOATS + l) * C + k];
}

// linear_forward_naive's sums, tiled.
static int linear_forward_cpu(float* restrict out, const float* restrict inp,
                              const float* restrict w, const float* restrict bias, int B, int C,
                              int OC) {
    // out[b][o .. o + TILE_COLS) needs w's rows o .. o + TILE_COLS) down a column, i: the
    // panel holds them transposed, so that the tile reads them along a row. Packing costs a
    // copy of w per call, which B / TILE_ROWS row tiles then share.
    // With one input (the first layer) w (OC, 1) is laid out as its own transpose (1, OC).
    if (C <= 1) {
        matmul_cpu(out, bias, inp, 1, 1, w, B, C, OC);
        return 0;
    }
    float panel[KC * TILE_COLS]; // (2, KC, SIMD_FLOATS)
    int o = 0;
    for (; o + TILE_COLS <= OC; o += TILE_COLS)
        for (int k = 0; k < C; k += KC) {
            int kc = min_int(KC, C - k);
            pack_transposed(panel, w + (size_t)o * C + k, C, kc);
            // the first block starts the sums, the last one adds the bias
            const float* tile_bias = k + kc == C ? bias + o : NULL;
            for (int b = 0; b < B; b += TILE_ROWS)
                linear_tile(out + (size_t)b * OC + o, OC, tile_bias, k > 0, inp + (size_t)b * C + k,
                            C, 1, panel, SIMD_FLOATS, (size_t)kc * SIMD_FLOATS,
                            min_int(TILE_ROWS, B - b), kc);
        }
    // Outputs left over (fewer than a tile: all of them for the last layer, OC = 1): one
    // dot product along C each.
    for (; o < OC; o++)
        for (int b = 0; b < B; b++)
            out[(size_t)b * OC + o] = bias[o] + dot_cpu(inp + (size_t)b * C, w + (size_t)o * C, C);
    return 0;
}

// linear_backward_naive's sums, tiled.
static int linear_backward_cpu(float* restrict dinp, float* restrict dw, float* restrict dbias,
                               const float* restrict dout, const float* restrict inp,
                               const float* restrict w, int B, int C, int OC) {
    if (dw != NULL) {
        // dbias[o] = sum over b of dout[b][o], added row by row so that the loop over o is
        // contiguous; each dbias[o] still adds its terms in b order.
        for (int o = 0; o < OC; o++)
            dbias[o] = 0.0f;
        for (int b = 0; b < B; b++)
            for (int o = 0; o < OC; o++)
                dbias[o] += dout[(size_t)b * OC + o];
        // dw[o][i] = sum over b of dout[b][o] * inp[b][i]. With one input (the first layer)
        // dw (OC, 1) is laid out as its transpose (1, OC) = inp^T @ dout: one row of OC
        // outputs, which fills the tiles where dw's single column would not.
        if (C == 1)
            matmul_cpu(dw, NULL, inp, 0, 1, dout, 1, B, OC);
        else
            matmul_cpu(dw, NULL, dout, 1, OC, inp, OC, B, C);
    }
    // dinp[b][i] = sum over o of dout[b][o] * w[o][i]
    if (dinp != NULL)
        matmul_cpu(dinp, NULL, dout, OC, 1, w, B, OC, C);
    return 0;
}

// ----------------------------------------------------------------------------
// ReLU

static int relu_forward_cpu(float* out, const float* inp, int N) {
    for (int i = 0; i < N; i++)
        out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
    return 0;
}

static int relu_backward_cpu(float* dinp, const float* dout, const float* out, int N) {
    for (int i = 0; i < N; i++)
        dinp[i] = out[i] > 0.0f ? dout[i] : 0.0f;
    return 0;
}

// ----------------------------------------------------------------------------
// LayerNorm over the C features of each row

static int layernorm_forward_cpu(float* restrict out, float* restrict mean, float* restrict rstd,
                                 const float* restrict inp, const float* restrict gamma,
                                 const float* restrict beta, int B, int C) {
    // Three passes over the rows, each taking every row one step further. A row's steps wait
    // on each other (a sum, a division, the next sum), different rows' do not: this way the
    // CPU works on several rows at once in each pass (one row at a time took 40% longer).
    for (int b = 0; b < B; b++) {
        const float* x = inp + (size_t)b * C;
        float part[SIMD_FLOATS] = {0}; // partial sums, as in dot_cpu
        int i = 0;
        for (; i + SIMD_FLOATS <= C; i += SIMD_FLOATS)
            for (int l = 0; l < SIMD_FLOATS; l++)
                part[l] += x[i + l];
        for (int l = 0; i + l < C; l++)
            part[l] += x[i + l];
        mean[b] = sum_lanes(part) / C;
    }
    for (int b = 0; b < B; b++) {
        const float* x = inp + (size_t)b * C;
        float* centred = out + (size_t)b * C; // x - m, scaled in place by the last pass
        for (int i = 0; i < C; i++)
            centred[i] = x[i] - mean[b];
        // the variance from the centred values: (x - m)^2, not x^2 - m^2, which cancels
        rstd[b] = 1.0f / sqrtf(dot_cpu(centred, centred, C) / C + LAYERNORM_EPS);
    }
    for (int b = 0; b < B; b++) {
        float* row = out + (size_t)b * C;
        for (int i = 0; i < C; i++)
            row[i] = row[i] * rstd[b] * gamma[i] + beta[i];
    }
    return 0;
}

// Adds feature i's terms of layernorm_backward's two row sums to lane l of each.
static inline void add_dnorm_terms(float* restrict part_dnorm, float* restrict part_dnorm_norm,
                                   int l, int i, const float* restrict x, const float* restrict d,
                                   const float* restrict gamma, float mean, float rstd) {
    float norm = (x[i] - mean) * rstd;
    float dnorm = d[i] * gamma[i];
    part_dnorm[l] += dnorm;
    part_dnorm_norm[l] += dnorm * norm;
}

// layernorm_backward's two sums over a row's C features, in partial sums as in dot_cpu: of
// dnorm = dout * gamma, and of dnorm * norm.
static void dnorm_row_sums(const float* restrict x, const float* restrict d,
                           const float* restrict gamma, float mean, float rstd, int C,
                           float* sum_dnorm, float* sum_dnorm_norm) {
    float part_dnorm[SIMD_FLOATS] = {0}, part_dnorm_norm[SIMD_FLOATS] = {0};
    int i = 0;
    for (; i + SIMD_FLOATS <= C; i += SIMD_FLOATS)
        for (int l = 0; l < SIMD_FLOATS; l++)
            add_dnorm_terms(part_dnorm, part_dnorm_norm, l, i + l, x, d, gamma, mean, rstd);
    for (int l = 0; i + l < C; l++)
        add_dnorm_terms(part_dnorm, part_dnorm_norm, l, i + l, x, d, gamma, mean, rstd);
    *sum_dnorm = sum_lanes(part_dnorm);
    *sum_dnorm_norm = sum_lanes(part_dnorm_norm);
}

static int layernorm_backward_cpu(float* restrict dinp, float* restrict dgamma,
                                  float* restrict dbeta, const float* restrict dout,
                                  const float* restrict inp, const float* restrict mean,
                                  const float* restrict rstd, const float* restrict gamma, int B,
                                  int C) {
    memset(dgamma, 0, (size_t)C * sizeof(float));
    memset(dbeta, 0, (size_t)C * sizeof(float));
    for (int b = 0; b < B; b++) {
        const float* x = inp + (size_t)b * C;
        const float* d = dout + (size_t)b * C;
        float sum_dnorm, sum_dnorm_norm;
        dnorm_row_sums(x, d, gamma, mean[b], rstd[b], C, &sum_dnorm, &sum_dnorm_norm);
        float mean_dnorm = sum_dnorm / C, mean_dnorm_norm = sum_dnorm_norm / C;
        for (int i = 0; i < C; i++) {
            float norm = (x[i] - mean[b]) * rstd[b];
            float dnorm = d[i] * gamma[i];
            dgamma[i] += d[i] * norm;
            dbeta[i] += d[i];
            // the mean and the variance depend on every input of the row
            dinp[(size_t)b * C + i] = (dnorm - mean_dnorm - norm * mean_dnorm_norm) * rstd[b];
        }
    }
    return 0;
}

// ----------------------------------------------------------------------------
// mean squared error

static int mse_forward_cpu(float* loss, const float* pred, const float* target, float scale,
                           int B) {
    float sum = 0.0f;
    for (int b = 0; b < B; b++)
        sum += (pred[b] - target[b]) * (pred[b] - target[b]);
    *loss += scale * sum;
    return 0;
}

static int mse_backward_cpu(float* dpred, const float* pred, const float* target, int B) {
    for (int b = 0; b < B; b++)
        dpred[b] = 2.0f * (pred[b] - target[b]) / B;
    return 0;
}

// ----------------------------------------------------------------------------
// optimizers

static int adam_update_cpu(float* restrict params, float* restrict m, float* restrict v,
                           const float* restrict grads, AdamSettings s, int N) {
    // torch.optim.Adam: p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), with the bias
    // corrections bc = 1 - beta^step. Multiplying through by sqrt(bc2) leaves one
    // square root and one division per element.
    // One pass, element by element, over contiguous arrays: the compiler vectorises it as
    // written. Its time is the square roots and divisions, which share one divider unit;
    // reciprocal approximations would be faster, and no longer torch's results.
    float bc1 = 1.0f - powf(s.beta1, (float)s.step);
    float bc2_sqrt = sqrtf(1.0f - powf(s.beta2, (float)s.step));
    float step_size = s.learning_rate / bc1 * bc2_sqrt;
    float eps = s.eps * bc2_sqrt;
    for (int i = 0; i < N; i++) {
        m[i] = s.beta1 * m[i] + (1.0f - s.beta1) * grads[i];
        v[i] = s.beta2 * v[i] + (1.0f - s.beta2) * grads[i] * grads[i];
        params[i] -= step_size * m[i] / (sqrtf(v[i]) + eps);
    }
    return 0;
}

static int add_scaled_cpu(float* restrict sum, const float* restrict x, float scale, int N) {
    for (int i = 0; i < N; i++)
        sum[i] += scale * x[i];
    return 0;
}

static int sgd_update_cpu(float* restrict params, float* restrict velocity,
                          const float* restrict grads, float learning_rate, float momentum, int N) {
    // one vectorised pass, as adam_update_cpu
    for (int i = 0; i < N; i++) {
        velocity[i] = momentum * velocity[i] + grads[i];
        params[i] -= learning_rate * velocity[i];
    }
    return 0;
}

// ----------------------------------------------------------------------------
// the tables

const Kernels kernels_cpu = {
    .name = "cpu",
    .alloc = alloc_cpu,
    .release = release_cpu,
    .upload = copy_cpu,
    .download = copy_cpu,
    .zero = zero_cpu,
    .synchronize = synchronize_cpu,
    .gather_batch = gather_batch_cpu,
    .linear_forward = linear_forward_cpu,
    .linear_backward = linear_backward_cpu,
    .relu_forward = relu_forward_cpu,
    .relu_backward = relu_backward_cpu,
    .layernorm_forward = layernorm_forward_cpu,
    .layernorm_backward = layernorm_backward_cpu,
    .mse_forward = mse_forward_cpu,
    .mse_backward = mse_backward_cpu,
    .adam_update = adam_update_cpu,
    .sgd_update = sgd_update_cpu,
    .add_scaled = add_scaled_cpu,
};

// kernels_cpu with the linear layer's reference loops: the specification the tiled code is
// tested against (the other operations have one version, kernels_cpu's).
const Kernels kernels_cpu_naive = {
    .name = "cpu-naive",
    .alloc = alloc_cpu,
    .release = release_cpu,
    .upload = copy_cpu,
    .download = copy_cpu,
    .zero = zero_cpu,
    .synchronize = synchronize_cpu,
    .gather_batch = gather_batch_cpu,
    .linear_forward = linear_forward_naive,
    .linear_backward = linear_backward_naive,
    .relu_forward = relu_forward_cpu,
    .relu_backward = relu_backward_cpu,
    .layernorm_forward = layernorm_forward_cpu,
    .layernorm_backward = layernorm_backward_cpu,
    .mse_forward = mse_forward_cpu,
    .mse_backward = mse_backward_cpu,
    .adam_update = adam_update_cpu,
    .sgd_update = sgd_update_cpu,
    .add_scaled = add_scaled_cpu,
};
