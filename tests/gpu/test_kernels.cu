/*
 * test_kernels.cu - the CUDA kernels against their CPU twins (common/kernels_cuda.cu).
 *
 * Every test runs one operation through both Kernels tables on the same
 * random inputs (fixed seeds, common/rng.h) and requires the normwise relative
 * error max|gpu - cpu| / max|cpu| to stay within TOLERANCE: the GPU fuses
 * multiplies and adds differently and reduces in another order, so the two
 * agree to rounding, not bit for bit. Where the terms of a sum may cancel,
 * the error is measured against the size of the terms instead (their
 * absolute values summed), which is what bounds the rounding error. Sizes
 * include the awkward ones: a single row, rows that do not fill a warp,
 * widths one past a power of two. The last tests train the whole model a few
 * steps on both devices.
 *
 * Without a GPU every test skips. Criterion forks a process per test, and the
 * tests share one device: run with --jobs 1.
 *
 * Shapes: B batch rows, C input features, OC output features, N elements.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "data.h"
#include "device.h"
#include "kernels.h"
#include "mlp.h"
#include "rng.h"

// Normwise relative error allowed between one kernel's outputs on the two devices.
#define TOLERANCE 1e-5
// ... and between the two models after a few training steps.
#define MODEL_TOLERANCE 1e-4
// An rng stream of its own, apart from those of the data and the initial weights.
#define RNG_STREAM_TEST 100

#define SKIP_WITHOUT_GPU()                                                                         \
    do {                                                                                           \
        if (device_gpu_count() == 0)                                                               \
            cr_skip_test("no GPU: the CUDA kernels cannot run here");                              \
    } while (0)

static const int BATCHES[] = {1, 7, 33}; // B: one row, a part of a warp, one past a warp
static const int WIDTHS[] = {1, 64, 65}; // C and OC
#define COUNT(array) ((int)(sizeof(array) / sizeof(array[0])))

// ----------------------------------------------------------------------------
// helpers: random data, tensors on both devices, comparison

// n floats uniform in [lo, hi), a pure function of (seed, i).
static float* random_floats(size_t n, uint64_t seed, float lo, float hi) {
    float* host = (float*)malloc((n > 0 ? n : 1) * sizeof(float));
    cr_assert(host != NULL, "out of memory");
    for (size_t i = 0; i < n; i++)
        host[i] = lo + (hi - lo) * (float)rng_uniform(seed, RNG_STREAM_TEST, i);
    return host;
}

// One tensor, one copy in each table's memory, filled alike.
typedef struct {
    float* cpu; // (n) in kernels_cpu's memory
    float* gpu; // (n) in kernels_cuda's memory
    size_t n;
} Twin;

static Twin twin_from_host(const float* host, size_t n) {
    Twin t;
    t.n = n;
    t.cpu = (float*)kernels_cpu.alloc(n * sizeof(float));
    t.gpu = (float*)kernels_cuda.alloc(n * sizeof(float));
    cr_assert(t.cpu != NULL && t.gpu != NULL, "cannot allocate %zu floats", n);
    cr_assert_eq(kernels_cpu.upload(t.cpu, host, n * sizeof(float)), 0);
    cr_assert_eq(kernels_cuda.upload(t.gpu, host, n * sizeof(float)), 0);
    return t;
}

static Twin twin_random(size_t n, uint64_t seed, float lo, float hi) {
    float* host = random_floats(n, seed, lo, hi);
    Twin t = twin_from_host(host, n);
    free(host);
    return t;
}

static void twin_free(Twin* t) {
    kernels_cpu.release(t->cpu);
    kernels_cuda.release(t->gpu);
}

// Expects max|gpu - cpu| / max(max|cpu|, scale) <= tolerance; otherwise names the
// worst element, both values and the largest difference. A NaN counts as the worst.
// scale: the size of the terms behind the outputs where they may cancel, else 0.
static void expect_close(const float* gpu, const float* cpu, size_t n, double tolerance,
                         double scale, const char* what) {
    size_t worst = 0;
    double max_diff = 0.0, max_cpu = 0.0;
    for (size_t i = 0; i < n; i++) {
        double diff = fabs((double)gpu[i] - (double)cpu[i]);
        if (isnan(diff))
            diff = INFINITY;
        if (diff > max_diff) {
            max_diff = diff;
            worst = i;
        }
        max_cpu = fmax(max_cpu, fabs((double)cpu[i]));
    }
    double relative = max_diff / fmax(fmax(max_cpu, scale), 1e-30);
    cr_expect(relative <= tolerance,
              "%s: worst element %zu: gpu %.9g, cpu %.9g; max |gpu - cpu| %.3g, "
              "relative %.3g > %.0e (max |cpu| %.3g, scale %.3g)",
              what, worst, n > 0 ? gpu[worst] : 0.0f, n > 0 ? cpu[worst] : 0.0f, max_diff, relative,
              tolerance, max_cpu, scale);
}

// Downloads both copies and compares them (see expect_close).
static void twin_expect_close(const Twin* t, double tolerance, double scale, const char* what) {
    size_t bytes = (t->n > 0 ? t->n : 1) * sizeof(float);
    float* gpu = (float*)malloc(bytes);
    float* cpu = (float*)malloc(bytes);
    cr_assert(gpu != NULL && cpu != NULL, "out of memory");
    cr_assert_eq(kernels_cuda.download(gpu, t->gpu, t->n * sizeof(float)), 0, "%s", what);
    cr_assert_eq(kernels_cpu.download(cpu, t->cpu, t->n * sizeof(float)), 0);
    expect_close(gpu, cpu, t->n, tolerance, scale, what);
    free(gpu);
    free(cpu);
}

// A copy of the n floats at host with their signs dropped.
static float* abs_copy(const float* host, size_t n) {
    float* copy = (float*)malloc((n > 0 ? n : 1) * sizeof(float));
    cr_assert(copy != NULL, "out of memory");
    for (size_t i = 0; i < n; i++)
        copy[i] = fabsf(host[i]);
    return copy;
}

static double max_abs(const float* host, size_t n) {
    double max = 0.0;
    for (size_t i = 0; i < n; i++)
        max = fmax(max, fabs((double)host[i]));
    return max;
}

// ----------------------------------------------------------------------------
// memory

Test(kernels_cuda, alloc_gives_zeroed_memory_that_round_trips) {
    SKIP_WITHOUT_GPU();
    size_t n = 1000;
    float* host = random_floats(n, 1, -1.0f, 1.0f);
    float* back = (float*)malloc(n * sizeof(float));
    float* dev = (float*)kernels_cuda.alloc(n * sizeof(float));
    cr_assert(back != NULL && dev != NULL);

    cr_assert_eq(kernels_cuda.download(back, dev, n * sizeof(float)), 0);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(back[i], 0.0f, "fresh memory at %zu is %g, not 0", i, back[i]);
    cr_assert_eq(kernels_cuda.upload(dev, host, n * sizeof(float)), 0);
    cr_assert_eq(kernels_cuda.download(back, dev, n * sizeof(float)), 0);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(back[i], host[i], "element %zu came back as %g, not %g", i, back[i], host[i]);
    cr_assert_eq(kernels_cuda.zero(dev, n * sizeof(float)), 0);
    cr_assert_eq(kernels_cuda.download(back, dev, n * sizeof(float)), 0);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(back[i], 0.0f, "zeroed memory at %zu is %g", i, back[i]);
    cr_assert_eq(kernels_cuda.synchronize(), 0);

    kernels_cuda.release(dev);
    free(host);
    free(back);
}

// ----------------------------------------------------------------------------
// data

Test(kernels_cuda, gather_batch_matches_the_cpu_twin) {
    SKIP_WITHOUT_GPU();
    int n_data = 100;
    Twin data_x = twin_random(n_data, 2, -3.0f, 3.0f);
    Twin data_y = twin_random(n_data, 3, -1.0f, 1.0f);
    for (int bi = 0; bi < COUNT(BATCHES); bi++) {
        int B = BATCHES[bi];
        int* indices = (int*)malloc(B * sizeof(int));
        cr_assert(indices != NULL);
        for (int b = 0; b < B; b++)
            indices[b] = (int)(rng_u64(4, RNG_STREAM_TEST, b) % (uint64_t)n_data);
        int* idx_cpu = (int*)kernels_cpu.alloc(B * sizeof(int));
        int* idx_gpu = (int*)kernels_cuda.alloc(B * sizeof(int));
        cr_assert(idx_cpu != NULL && idx_gpu != NULL);
        cr_assert_eq(kernels_cpu.upload(idx_cpu, indices, B * sizeof(int)), 0);
        cr_assert_eq(kernels_cuda.upload(idx_gpu, indices, B * sizeof(int)), 0);
        Twin x = twin_random(B, 5, 9.0f, 10.0f), y = twin_random(B, 6, 9.0f, 10.0f);

        cr_assert_eq(kernels_cpu.gather_batch(x.cpu, y.cpu, data_x.cpu, data_y.cpu, idx_cpu, B), 0);
        cr_assert_eq(kernels_cuda.gather_batch(x.gpu, y.gpu, data_x.gpu, data_y.gpu, idx_gpu, B),
                     0);
        char what[64];
        snprintf(what, sizeof what, "gather_batch x, B=%d", B);
        twin_expect_close(&x, 0.0, 0.0, what); // a copy: exact
        snprintf(what, sizeof what, "gather_batch y, B=%d", B);
        twin_expect_close(&y, 0.0, 0.0, what);

        twin_free(&x);
        twin_free(&y);
        kernels_cpu.release(idx_cpu);
        kernels_cuda.release(idx_gpu);
        free(indices);
    }
    twin_free(&data_x);
    twin_free(&data_y);
}

// ----------------------------------------------------------------------------
// linear layer

// The largest sum of |terms| behind an output of linear_forward: the CPU twin run
// on |inp|, |w|, |bias| (kernels_cpu's memory is host memory).
static double linear_forward_scale(const Twin* inp, const Twin* w, const Twin* bias, int B, int C,
                                   int OC) {
    float* abs_inp = abs_copy(inp->cpu, inp->n);
    float* abs_w = abs_copy(w->cpu, w->n);
    float* abs_bias = abs_copy(bias->cpu, bias->n);
    float* sums = (float*)calloc((size_t)B * OC, sizeof(float));
    cr_assert_not_null(sums, "out of memory");
    cr_assert_eq(kernels_cpu.linear_forward(sums, abs_inp, abs_w, abs_bias, B, C, OC), 0);
    double scale = max_abs(sums, (size_t)B * OC);
    float* all[] = {abs_inp, abs_w, abs_bias, sums};
    for (int i = 0; i < COUNT(all); i++)
        free(all[i]);
    return scale;
}

Test(kernels_cuda, linear_forward_matches_the_cpu_twin) {
    SKIP_WITHOUT_GPU();
    for (int bi = 0; bi < COUNT(BATCHES); bi++)
        for (int ci = 0; ci < COUNT(WIDTHS); ci++)
            for (int oi = 0; oi < COUNT(WIDTHS); oi++) {
                int B = BATCHES[bi], C = WIDTHS[ci], OC = WIDTHS[oi];
                Twin inp = twin_random((size_t)B * C, 10, -1.0f, 1.0f);
                Twin w = twin_random((size_t)OC * C, 11, -1.0f, 1.0f);
                Twin bias = twin_random(OC, 12, -1.0f, 1.0f);
                Twin out = twin_random((size_t)B * OC, 13, -9.0f, 9.0f); // overwritten

                cr_assert_eq(
                    kernels_cpu.linear_forward(out.cpu, inp.cpu, w.cpu, bias.cpu, B, C, OC), 0);
                cr_assert_eq(
                    kernels_cuda.linear_forward(out.gpu, inp.gpu, w.gpu, bias.gpu, B, C, OC), 0);
                char what[64];
                snprintf(what, sizeof what, "linear_forward out, B=%d C=%d OC=%d", B, C, OC);
                double scale = linear_forward_scale(&inp, &w, &bias, B, C, OC);
                twin_expect_close(&out, TOLERANCE, scale, what);

                Twin* all[] = {&inp, &w, &bias, &out};
                for (int i = 0; i < COUNT(all); i++)
                    twin_free(all[i]);
            }
}

// The same for linear_backward: scales[0], [1], [2] for dinp, dw, dbias.
static void linear_backward_scales(double scales[3], const Twin* dout, const Twin* inp,
                                   const Twin* w, int B, int C, int OC) {
    float* abs_dout = abs_copy(dout->cpu, dout->n);
    float* abs_inp = abs_copy(inp->cpu, inp->n);
    float* abs_w = abs_copy(w->cpu, w->n);
    float* sums_dinp = abs_copy(inp->cpu, inp->n); // only the sizes matter
    float* sums_dw = abs_copy(w->cpu, w->n);
    float* sums_dbias = abs_copy(dout->cpu, OC);
    cr_assert_eq(kernels_cpu.linear_backward(sums_dinp, sums_dw, sums_dbias, abs_dout, abs_inp,
                                             abs_w, B, C, OC),
                 0);
    scales[0] = max_abs(sums_dinp, inp->n);
    scales[1] = max_abs(sums_dw, w->n);
    scales[2] = max_abs(sums_dbias, OC);
    float* all[] = {abs_dout, abs_inp, abs_w, sums_dinp, sums_dw, sums_dbias};
    for (int i = 0; i < COUNT(all); i++)
        free(all[i]);
}

// Which gradients a linear_backward call asks for (the others are NULL): mlp.c asks for
// dw and dbias, then (but for the first layer) dinp alone; all three at once is the CPU twin's
// whole contract.
enum { WANT_DINP = 1, WANT_DW = 2, WANT_DBIAS = 4, WANT_ALL = 7 };

// Runs linear_backward on both devices at one size, asking for the gradients in want.
static void check_linear_backward(int B, int C, int OC, int want) {
    Twin dout = twin_random((size_t)B * OC, 20, -1.0f, 1.0f);
    Twin inp = twin_random((size_t)B * C, 21, -1.0f, 1.0f);
    Twin w = twin_random((size_t)OC * C, 22, -1.0f, 1.0f);
    // outputs start as garbage: a gradient function overwrites, it does not add
    Twin dinp = twin_random((size_t)B * C, 23, -9.0f, 9.0f);
    Twin dw = twin_random((size_t)OC * C, 24, -9.0f, 9.0f);
    Twin dbias = twin_random(OC, 25, -9.0f, 9.0f);

    Twin* outputs[] = {&dinp, &dw, &dbias};
    const char* names[] = {"dinp", "dw", "dbias"};
    float* cpu[3];
    float* gpu[3];
    for (int i = 0; i < 3; i++) {
        cpu[i] = want & (1 << i) ? outputs[i]->cpu : NULL;
        gpu[i] = want & (1 << i) ? outputs[i]->gpu : NULL;
    }
    cr_assert_eq(
        kernels_cpu.linear_backward(cpu[0], cpu[1], cpu[2], dout.cpu, inp.cpu, w.cpu, B, C, OC), 0);
    cr_assert_eq(
        kernels_cuda.linear_backward(gpu[0], gpu[1], gpu[2], dout.gpu, inp.gpu, w.gpu, B, C, OC),
        0);
    double scales[3];
    linear_backward_scales(scales, &dout, &inp, &w, B, C, OC);
    char what[96];
    for (int i = 0; i < 3; i++) {
        if ((want & (1 << i)) == 0)
            continue; // (NULL on both devices: nothing to compare)
        snprintf(what, sizeof what, "linear_backward %s (want %d), B=%d C=%d OC=%d", names[i], want,
                 B, C, OC);
        twin_expect_close(outputs[i], TOLERANCE, scales[i], what);
    }

    Twin* all[] = {&dout, &inp, &w, &dinp, &dw, &dbias};
    for (int i = 0; i < COUNT(all); i++)
        twin_free(all[i]);
}

Test(kernels_cuda, linear_backward_matches_the_cpu_twin) {
    SKIP_WITHOUT_GPU();
    for (int bi = 0; bi < COUNT(BATCHES); bi++)
        for (int ci = 0; ci < COUNT(WIDTHS); ci++)
            for (int oi = 0; oi < COUNT(WIDTHS); oi++)
                check_linear_backward(BATCHES[bi], WIDTHS[ci], WIDTHS[oi], WANT_ALL);
}

// The calls that ask for some of the gradients: the others are NULL, and must not be written
// (a write through NULL faults on a GPU, and on CUDA on the CPU).
Test(kernels_cuda, linear_backward_computes_only_the_gradients_asked_for) {
    SKIP_WITHOUT_GPU();
    for (int bi = 0; bi < COUNT(BATCHES); bi++)
        for (int oi = 0; oi < COUNT(WIDTHS); oi++) {
            check_linear_backward(BATCHES[bi], 1, WIDTHS[oi], WANT_DW | WANT_DBIAS);
            check_linear_backward(BATCHES[bi], WIDTHS[oi], 7, WANT_DINP);
        }
}

// ----------------------------------------------------------------------------
// ReLU

// inputs in [-1, 1) with every third one exactly 0, where the ReLU's branch flips
static Twin relu_input(size_t n, uint64_t seed) {
    float* host = random_floats(n, seed, -1.0f, 1.0f);
    for (size_t i = 0; i < n; i += 3)
        host[i] = 0.0f;
    Twin t = twin_from_host(host, n);
    free(host);
    return t;
}

Test(kernels_cuda, relu_forward_and_backward_match_the_cpu_twins) {
    SKIP_WITHOUT_GPU();
    int sizes[] = {1, 7, 64, 65, 33 * 65, 100000};
    for (int si = 0; si < COUNT(sizes); si++) {
        int N = sizes[si];
        Twin inp = relu_input(N, 30);
        Twin dout = twin_random(N, 31, -1.0f, 1.0f);
        Twin out = twin_random(N, 32, -9.0f, 9.0f), dinp = twin_random(N, 33, -9.0f, 9.0f);

        cr_assert_eq(kernels_cpu.relu_forward(out.cpu, inp.cpu, N), 0);
        cr_assert_eq(kernels_cuda.relu_forward(out.gpu, inp.gpu, N), 0);
        cr_assert_eq(kernels_cpu.relu_backward(dinp.cpu, dout.cpu, out.cpu, N), 0);
        cr_assert_eq(kernels_cuda.relu_backward(dinp.gpu, dout.gpu, out.gpu, N), 0);
        char what[64];
        snprintf(what, sizeof what, "relu_forward out, N=%d", N);
        twin_expect_close(&out, 0.0, 0.0, what); // no arithmetic: exact
        snprintf(what, sizeof what, "relu_backward dinp, N=%d", N);
        twin_expect_close(&dinp, 0.0, 0.0, what);

        Twin* all[] = {&inp, &dout, &out, &dinp};
        for (int i = 0; i < COUNT(all); i++)
            twin_free(all[i]);
    }
}

// ----------------------------------------------------------------------------
// LayerNorm

Test(kernels_cuda, layernorm_forward_matches_the_cpu_twin) {
    SKIP_WITHOUT_GPU();
    for (int bi = 0; bi < COUNT(BATCHES); bi++)
        for (int ci = 0; ci < COUNT(WIDTHS); ci++) {
            int B = BATCHES[bi], C = WIDTHS[ci];
            // an offset mean, as a linear layer's outputs have
            Twin inp = twin_random((size_t)B * C, 40, 2.0f, 4.0f);
            Twin gamma = twin_random(C, 41, 0.5f, 1.5f), beta = twin_random(C, 42, -1.0f, 1.0f);
            Twin out = twin_random((size_t)B * C, 43, -9.0f, 9.0f);
            Twin mean = twin_random(B, 44, -9.0f, 9.0f), rstd = twin_random(B, 45, -9.0f, 9.0f);

            cr_assert_eq(kernels_cpu.layernorm_forward(out.cpu, mean.cpu, rstd.cpu, inp.cpu,
                                                       gamma.cpu, beta.cpu, B, C),
                         0);
            cr_assert_eq(kernels_cuda.layernorm_forward(out.gpu, mean.gpu, rstd.gpu, inp.gpu,
                                                        gamma.gpu, beta.gpu, B, C),
                         0);
            char what[64];
            snprintf(what, sizeof what, "layernorm_forward out, B=%d C=%d", B, C);
            twin_expect_close(&out, TOLERANCE, 0.0, what);
            snprintf(what, sizeof what, "layernorm_forward mean, B=%d C=%d", B, C);
            twin_expect_close(&mean, TOLERANCE, 0.0, what);
            snprintf(what, sizeof what, "layernorm_forward rstd, B=%d C=%d", B, C);
            twin_expect_close(&rstd, TOLERANCE, 0.0, what);

            Twin* all[] = {&inp, &gamma, &beta, &out, &mean, &rstd};
            for (int i = 0; i < COUNT(all); i++)
                twin_free(all[i]);
        }
}

// The sizes of the terms behind layernorm_backward's outputs: scales[0] for dinp (each
// term of the bracket is about rstd * |dout * gamma| * (1 + |norm|)), [1] for dgamma
// (the sum over b of |dout * norm|), [2] for dbeta (the sum over b of |dout|). With
// one or two features the row's gradient cancels to rounding noise: only this scale
// makes a relative error meaningful there.
static void layernorm_backward_scales(double scales[3], const float* dout, const float* x,
                                      const float* mean, const float* rstd, const float* gamma,
                                      int B, int C) {
    scales[0] = scales[1] = scales[2] = 0.0;
    for (int i = 0; i < C; i++) {
        double sum_dgamma = 0.0, sum_dbeta = 0.0;
        for (int b = 0; b < B; b++) {
            double d = fabs(dout[(size_t)b * C + i]);
            double norm = fabs((x[(size_t)b * C + i] - mean[b]) * rstd[b]);
            scales[0] = fmax(scales[0], rstd[b] * d * fabs(gamma[i]) * (1.0 + norm));
            sum_dgamma += d * norm;
            sum_dbeta += d;
        }
        scales[1] = fmax(scales[1], sum_dgamma);
        scales[2] = fmax(scales[2], sum_dbeta);
    }
}

// Runs layernorm_backward on both devices at one size, from the CPU forward's saved values.
static void check_layernorm_backward(int B, int C) {
    size_t BC = (size_t)B * C;
    float* x = random_floats(BC, 50, 2.0f, 4.0f);
    float* g = random_floats(C, 51, 0.5f, 1.5f);
    float* out = (float*)malloc(BC * sizeof(float));
    float* host_mean = (float*)malloc(B * sizeof(float));
    float* host_rstd = (float*)malloc(B * sizeof(float));
    float* zeros = (float*)calloc(C, sizeof(float));
    cr_assert(out != NULL && host_mean != NULL && host_rstd != NULL && zeros != NULL);
    // kernels_cpu works in host memory: its forward gives the saved values directly
    cr_assert_eq(kernels_cpu.layernorm_forward(out, host_mean, host_rstd, x, g, zeros, B, C), 0);
    Twin inp = twin_from_host(x, BC), gamma = twin_from_host(g, C);
    Twin mean = twin_from_host(host_mean, B), rstd = twin_from_host(host_rstd, B);
    Twin dout = twin_random(BC, 52, -1.0f, 1.0f);
    Twin dinp = twin_random(BC, 53, -9.0f, 9.0f);
    Twin dgamma = twin_random(C, 54, -9.0f, 9.0f), dbeta = twin_random(C, 55, -9.0f, 9.0f);

    cr_assert_eq(kernels_cpu.layernorm_backward(dinp.cpu, dgamma.cpu, dbeta.cpu, dout.cpu, inp.cpu,
                                                mean.cpu, rstd.cpu, gamma.cpu, B, C),
                 0);
    cr_assert_eq(kernels_cuda.layernorm_backward(dinp.gpu, dgamma.gpu, dbeta.gpu, dout.gpu, inp.gpu,
                                                 mean.gpu, rstd.gpu, gamma.gpu, B, C),
                 0);
    double scales[3];
    layernorm_backward_scales(scales, dout.cpu, x, host_mean, host_rstd, g, B, C);
    char what[64];
    snprintf(what, sizeof what, "layernorm_backward dinp, B=%d C=%d", B, C);
    twin_expect_close(&dinp, TOLERANCE, scales[0], what);
    snprintf(what, sizeof what, "layernorm_backward dgamma, B=%d C=%d", B, C);
    twin_expect_close(&dgamma, TOLERANCE, scales[1], what);
    snprintf(what, sizeof what, "layernorm_backward dbeta, B=%d C=%d", B, C);
    twin_expect_close(&dbeta, TOLERANCE, scales[2], what);

    Twin* all[] = {&inp, &gamma, &mean, &rstd, &dout, &dinp, &dgamma, &dbeta};
    for (int i = 0; i < COUNT(all); i++)
        twin_free(all[i]);
    float* host[] = {x, g, out, host_mean, host_rstd, zeros};
    for (int i = 0; i < COUNT(host); i++)
        free(host[i]);
}

Test(kernels_cuda, layernorm_backward_matches_the_cpu_twin) {
    SKIP_WITHOUT_GPU();
    for (int bi = 0; bi < COUNT(BATCHES); bi++)
        for (int ci = 0; ci < COUNT(WIDTHS); ci++)
            check_layernorm_backward(BATCHES[bi], WIDTHS[ci]);
}

// ----------------------------------------------------------------------------
// mean squared error

Test(kernels_cuda, mse_forward_adds_to_the_loss_as_the_cpu_twin_does) {
    SKIP_WITHOUT_GPU();
    // past one block of threads too, where each thread sums several rows; not much
    // further: the CPU's one running sum loses about sqrt(B) roundings of accuracy
    int sizes[] = {1, 7, 33, 256, 257, 1000, 4000};
    for (int si = 0; si < COUNT(sizes); si++) {
        int B = sizes[si];
        Twin pred = twin_random(B, 60, -1.0f, 1.0f), target = twin_random(B, 61, -1.0f, 1.0f);
        float start = 0.5f;
        Twin loss = twin_from_host(&start, 1);
        // twice: the second call must add to the first
        for (int call = 0; call < 2; call++) {
            cr_assert_eq(kernels_cpu.mse_forward(loss.cpu, pred.cpu, target.cpu, 1.0f / B, B), 0);
            cr_assert_eq(kernels_cuda.mse_forward(loss.gpu, pred.gpu, target.gpu, 1.0f / B, B), 0);
        }
        char what[64];
        snprintf(what, sizeof what, "mse_forward loss, B=%d", B);
        twin_expect_close(&loss, TOLERANCE, 0.0, what);

        Twin* all[] = {&pred, &target, &loss};
        for (int i = 0; i < COUNT(all); i++)
            twin_free(all[i]);
    }
}

Test(kernels_cuda, mse_backward_matches_the_cpu_twin) {
    SKIP_WITHOUT_GPU();
    int sizes[] = {1, 7, 33, 1000};
    for (int si = 0; si < COUNT(sizes); si++) {
        int B = sizes[si];
        Twin pred = twin_random(B, 62, -1.0f, 1.0f), target = twin_random(B, 63, -1.0f, 1.0f);
        Twin dpred = twin_random(B, 64, -9.0f, 9.0f);

        cr_assert_eq(kernels_cpu.mse_backward(dpred.cpu, pred.cpu, target.cpu, B), 0);
        cr_assert_eq(kernels_cuda.mse_backward(dpred.gpu, pred.gpu, target.gpu, B), 0);
        char what[64];
        snprintf(what, sizeof what, "mse_backward dpred, B=%d", B);
        twin_expect_close(&dpred, TOLERANCE, 0.0, what);

        Twin* all[] = {&pred, &target, &dpred};
        for (int i = 0; i < COUNT(all); i++)
            twin_free(all[i]);
    }
}

// ----------------------------------------------------------------------------
// optimizers

Test(kernels_cuda, adam_update_matches_the_cpu_twin_over_several_steps) {
    SKIP_WITHOUT_GPU();
    int sizes[] = {1, 65, mlp_num_params(64)};
    for (int si = 0; si < COUNT(sizes); si++) {
        int N = sizes[si];
        Twin params = twin_random(N, 70, -1.0f, 1.0f);
        float* zeros = (float*)calloc(N, sizeof(float));
        cr_assert(zeros != NULL);
        Twin m = twin_from_host(zeros, N), v = twin_from_host(zeros, N); // moments start at 0
        for (int step = 1; step <= 3; step++) {
            Twin grads = twin_random(N, 71 + step, -1.0f, 1.0f);
            AdamSettings s = {0.01f, 0.9f, 0.999f, 1e-8f, step};
            cr_assert_eq(kernels_cpu.adam_update(params.cpu, m.cpu, v.cpu, grads.cpu, s, N), 0);
            cr_assert_eq(kernels_cuda.adam_update(params.gpu, m.gpu, v.gpu, grads.gpu, s, N), 0);
            twin_free(&grads);
        }
        char what[64];
        snprintf(what, sizeof what, "adam_update params, N=%d", N);
        twin_expect_close(&params, TOLERANCE, 0.0, what);
        snprintf(what, sizeof what, "adam_update m, N=%d", N);
        twin_expect_close(&m, TOLERANCE, 0.0, what);
        snprintf(what, sizeof what, "adam_update v, N=%d", N);
        twin_expect_close(&v, TOLERANCE, 0.0, what);

        twin_free(&params);
        twin_free(&m);
        twin_free(&v);
        free(zeros);
    }
}

Test(kernels_cuda, sgd_update_matches_the_cpu_twin_over_several_steps) {
    SKIP_WITHOUT_GPU();
    int sizes[] = {1, 65, mlp_num_params(64)};
    for (int si = 0; si < COUNT(sizes); si++) {
        int N = sizes[si];
        Twin params = twin_random(N, 80, -1.0f, 1.0f);
        Twin velocity = twin_random(N, 81, -0.1f, 0.1f);
        for (int step = 1; step <= 3; step++) {
            Twin grads = twin_random(N, 81 + step, -1.0f, 1.0f);
            cr_assert_eq(
                kernels_cpu.sgd_update(params.cpu, velocity.cpu, grads.cpu, 0.01f, 0.9f, N), 0);
            cr_assert_eq(
                kernels_cuda.sgd_update(params.gpu, velocity.gpu, grads.gpu, 0.01f, 0.9f, N), 0);
            twin_free(&grads);
        }
        char what[64];
        snprintf(what, sizeof what, "sgd_update params, N=%d", N);
        twin_expect_close(&params, TOLERANCE, 0.0, what);
        snprintf(what, sizeof what, "sgd_update velocity, N=%d", N);
        twin_expect_close(&velocity, TOLERANCE, 0.0, what);

        twin_free(&params);
        twin_free(&velocity);
    }
}

// ----------------------------------------------------------------------------
// empty sizes

Test(kernels_cuda, empty_batches_launch_nothing_and_still_zero_the_weight_gradients) {
    SKIP_WITHOUT_GPU();
    int C = 5, OC = 3;
    Twin buf = twin_random(64, 90, -1.0f, 1.0f); // stands in for every empty tensor
    Twin dw = twin_random((size_t)OC * C, 91, -9.0f, 9.0f),
         dbias = twin_random(OC, 92, -9.0f, 9.0f);
    Twin dgamma = twin_random(C, 93, -9.0f, 9.0f), dbeta = twin_random(C, 94, -9.0f, 9.0f);
    const Kernels* tables[] = {&kernels_cpu, &kernels_cuda};
    for (int t = 0; t < 2; t++) {
        const Kernels* k = tables[t];
        float* p = t == 0 ? buf.cpu : buf.gpu;
        AdamSettings s = {0.01f, 0.9f, 0.999f, 1e-8f, 1};
        cr_assert_eq(k->gather_batch(p, p, p, p, (const int*)p, 0), 0, "%s", k->name);
        cr_assert_eq(k->linear_forward(p, p, p, p, 0, C, OC), 0, "%s", k->name);
        cr_assert_eq(k->relu_forward(p, p, 0), 0, "%s", k->name);
        cr_assert_eq(k->relu_backward(p, p, p, 0), 0, "%s", k->name);
        cr_assert_eq(k->layernorm_forward(p, p, p, p, p, p, 0, C), 0, "%s", k->name);
        cr_assert_eq(k->mse_forward(p, p, p, 1.0f, 0), 0, "%s", k->name);
        cr_assert_eq(k->mse_backward(p, p, p, 0), 0, "%s", k->name);
        cr_assert_eq(k->adam_update(p, p, p, p, s, 0), 0, "%s", k->name);
        cr_assert_eq(k->sgd_update(p, p, p, 0.01f, 0.9f, 0), 0, "%s", k->name);
        // no rows: the gradients of the weights are sums over nothing, 0
        cr_assert_eq(k->linear_backward(p, t == 0 ? dw.cpu : dw.gpu, t == 0 ? dbias.cpu : dbias.gpu,
                                        p, p, p, 0, C, OC),
                     0, "%s", k->name);
        cr_assert_eq(k->layernorm_backward(p, t == 0 ? dgamma.cpu : dgamma.gpu,
                                           t == 0 ? dbeta.cpu : dbeta.gpu, p, p, p, p, p, 0, C),
                     0, "%s", k->name);
        cr_assert_eq(k->synchronize(), 0, "%s", k->name);
    }
    twin_expect_close(&dw, 0.0, 0.0, "linear_backward dw, B=0");
    twin_expect_close(&dbias, 0.0, 0.0, "linear_backward dbias, B=0");
    twin_expect_close(&dgamma, 0.0, 0.0, "layernorm_backward dgamma, B=0");
    twin_expect_close(&dbeta, 0.0, 0.0, "layernorm_backward dbeta, B=0");

    Twin* all[] = {&buf, &dw, &dbias, &dgamma, &dbeta};
    for (int i = 0; i < COUNT(all); i++)
        twin_free(all[i]);
}

// ----------------------------------------------------------------------------
// the whole model

#define MODEL_HIDDEN 64
#define MODEL_BATCH 32
#define MODEL_STEPS 5
#define MODEL_SEED 42

// One model and its data on one device.
typedef struct {
    const Kernels* k;
    Mlp model;
    Optimizer opt;
    float* x;     // (n_total) every sample's input, on the device
    float* y;     // (n_total) every sample's target
    int* indices; // (num_samples) epoch 0's shuffled order
} ModelRun;

static void model_run_start(ModelRun* r, const Kernels* k, OptimizerKind kind, const Dataset* data,
                            const Sampler* s) {
    size_t n_total = (size_t)data->n_train + data->n_eval;
    r->k = k;
    r->opt.kind = kind;
    r->opt.learning_rate = 0.01f;
    r->opt.momentum = 0.9f;
    r->opt.step = 0;
    cr_assert_eq(mlp_create(&r->model, k, MODEL_HIDDEN, MODEL_BATCH), 0, "%s", k->name);
    cr_assert_eq(mlp_init_params(&r->model, MODEL_SEED), 0, "%s", k->name);
    r->x = (float*)k->alloc(n_total * sizeof(float));
    r->y = (float*)k->alloc(n_total * sizeof(float));
    r->indices = (int*)k->alloc((size_t)s->num_samples * sizeof(int));
    cr_assert(r->x != NULL && r->y != NULL && r->indices != NULL, "%s", k->name);
    cr_assert_eq(k->upload(r->x, data->x, n_total * sizeof(float)), 0);
    cr_assert_eq(k->upload(r->y, data->y, n_total * sizeof(float)), 0);
    cr_assert_eq(k->upload(r->indices, s->indices, (size_t)s->num_samples * sizeof(int)), 0);
}

// One training step on batch number step; returns the batch's mean squared error.
static float model_run_step(ModelRun* r, int step) {
    Mlp* m = &r->model;
    float loss;
    cr_assert_eq(mlp_load_batch(m, r->x, r->y, r->indices + step * MODEL_BATCH, MODEL_BATCH), 0);
    cr_assert_eq(mlp_forward(m, MODEL_BATCH), 0, "%s forward", r->k->name);
    cr_assert_eq(mlp_loss(m, 1.0f / MODEL_BATCH, MODEL_BATCH), 0, "%s loss", r->k->name);
    cr_assert_eq(mlp_backward(m, MODEL_BATCH), 0, "%s backward", r->k->name);
    cr_assert_eq(mlp_update(m, &r->opt), 0, "%s update", r->k->name);
    cr_assert_eq(mlp_take_loss(m, &loss), 0, "%s", r->k->name);
    return loss;
}

static void model_run_free(ModelRun* r) {
    r->k->release(r->x);
    r->k->release(r->y);
    r->k->release(r->indices);
    mlp_free(&r->model);
}

// Trains the model MODEL_STEPS steps on both devices, comparing losses and parameters.
static void check_model_training(OptimizerKind kind, const char* name) {
    Dataset data;
    Sampler s;
    cr_assert_eq(dataset_create(&data, 1000, MODEL_SEED), 0);
    cr_assert_eq(sampler_create(&s, data.n_train, 1, 0, MODEL_SEED), 0);
    sampler_set_epoch(&s, 0);
    cr_assert(s.num_samples >= MODEL_STEPS * MODEL_BATCH);
    ModelRun cpu, gpu;
    model_run_start(&cpu, &kernels_cpu, kind, &data, &s);
    model_run_start(&gpu, &kernels_cuda, kind, &data, &s);
    int P = cpu.model.num_params;
    float* params_cpu = (float*)malloc((size_t)P * sizeof(float));
    float* params_gpu = (float*)malloc((size_t)P * sizeof(float));
    cr_assert(params_cpu != NULL && params_gpu != NULL);

    for (int step = 0; step < MODEL_STEPS; step++) {
        float loss_cpu = model_run_step(&cpu, step), loss_gpu = model_run_step(&gpu, step);
        char what[64];
        snprintf(what, sizeof what, "%s: loss of step %d", name, step + 1);
        expect_close(&loss_gpu, &loss_cpu, 1, MODEL_TOLERANCE, 0.0, what);
        cr_assert_eq(mlp_get_params(&cpu.model, params_cpu), 0);
        cr_assert_eq(mlp_get_params(&gpu.model, params_gpu), 0);
        snprintf(what, sizeof what, "%s: parameters after step %d", name, step + 1);
        expect_close(params_gpu, params_cpu, P, MODEL_TOLERANCE, 0.0, what);
    }

    free(params_cpu);
    free(params_gpu);
    model_run_free(&cpu);
    model_run_free(&gpu);
    sampler_free(&s);
    dataset_free(&data);
}

Test(kernels_cuda, the_model_trains_alike_on_both_devices_with_adam) {
    SKIP_WITHOUT_GPU();
    check_model_training(OPTIMIZER_ADAM, "adam");
}

Test(kernels_cuda, the_model_trains_alike_on_both_devices_with_sgd) {
    SKIP_WITHOUT_GPU();
    check_model_training(OPTIMIZER_SGD, "sgd");
}
