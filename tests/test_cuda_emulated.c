/*
 * test_cuda_emulated.c - CUDA code run on the CPU, one POSIX thread per CUDA thread, against
 * the CPU twin: the fused kernel's work (common/fused_batch.cuh) and the linear layer's
 * tiled forward pass (linear_forward_tile in common/kernels_cuda.cuh).
 *
 * No GPU is needed: the few CUDA names that the code uses are emulated here. threadIdx and
 * blockIdx are thread-local variables, __shared__ memory a static one, __syncthreads a
 * barrier of the block's threads, and the warp's shuffle an exchange through memory between
 * two barriers of the warp's 32 threads; the blocks of a grid run one after another. So the
 * test checks what a GPU would: every index (a wrong one reads the wrong element, which the
 * comparison with the CPU finds), every barrier (a missing one lets a thread read what
 * another has not written yet; one that not every thread reaches, or a shuffle that not
 * every lane of a warp reaches, hangs until the test's timeout), and the sums themselves.
 * What it cannot check is the GPU's own behaviour: the launch, shared memory's limits, the
 * compiler's fused multiply-adds (the tolerance covers them). tests/gpu/ runs the real
 * kernels on a GPU.
 *
 * Shapes: B batch rows, C input features, OC output features, H hidden features, P parameters.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "kernels.h"
#include "mlp.h"

// ----------------------------------------------------------------------------
// CUDA's names, emulated

#define CUDA_EMULATED
#define __device__ __attribute__((unused)) // not every test calls every function
#define __host__
#define __shared__ static // one copy for the block's threads; the blocks run one at a time

typedef struct {
    unsigned x, y, z;
} EmulatedDim3;

#define MAX_WARPS 32 // of a block of up to 1024 threads

static _Thread_local EmulatedDim3 emulated_thread_idx, emulated_block_idx;
static EmulatedDim3 emulated_block_dim;
#define threadIdx emulated_thread_idx
#define blockIdx emulated_block_idx
#define blockDim emulated_block_dim

static pthread_barrier_t block_barrier;
static pthread_barrier_t warp_barriers[MAX_WARPS];
static float warp_values[MAX_WARPS][32];

static void emulated_syncthreads(void) {
    pthread_barrier_wait(&block_barrier);
}

// The value of the lane `offset` away, as __shfl_xor_sync gives it: every lane of the warp
// leaves its value, waits for all of them, takes its partner's, waits again.
static float emulated_shfl_xor(unsigned mask, float v, int offset) {
    (void)mask;
    unsigned id = threadIdx.y * blockDim.x + threadIdx.x, lane = id % 32, warp = id / 32;
    warp_values[warp][lane] = v;
    pthread_barrier_wait(&warp_barriers[warp]);
    float partner = warp_values[warp][lane ^ (unsigned)offset];
    pthread_barrier_wait(&warp_barriers[warp]);
    return partner;
}

#define __syncthreads() emulated_syncthreads()
#define __shfl_xor_sync(mask, v, offset) emulated_shfl_xor((mask), (v), (offset))

#include "fused_batch.cuh"
#include "kernels_cuda.cuh"

// ----------------------------------------------------------------------------
// a launch, emulated

typedef struct {
    void (*body)(void* arg); // what every thread runs: a kernel's body
    void* arg;
    EmulatedDim3 thread, block;
} EmulatedThread;

static void* run_thread(void* arg) {
    EmulatedThread* t = arg;
    threadIdx = t->thread;
    blockIdx = t->block;
    t->body(t->arg);
    return NULL;
}

// One block (bx, by) of block.x * block.y threads (whole warps), each running body(arg).
static void run_block(EmulatedDim3 block, unsigned bx, unsigned by, void (*body)(void*),
                      void* arg) {
    unsigned n = block.x * block.y, warps = n / 32;
    cr_assert(n % 32 == 0 && warps <= MAX_WARPS, "a block of %u threads", n);
    EmulatedThread* threads = malloc(n * sizeof *threads);
    pthread_t* ids = malloc(n * sizeof *ids);
    pthread_attr_t attr;
    cr_assert(threads != NULL && ids != NULL);
    cr_assert_eq(pthread_barrier_init(&block_barrier, NULL, n), 0);
    for (unsigned w = 0; w < warps; w++)
        cr_assert_eq(pthread_barrier_init(&warp_barriers[w], NULL, 32), 0);
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (unsigned i = 0; i < n; i++) {
        threads[i] = (EmulatedThread){body, arg, {i % block.x, i / block.x, 0}, {bx, by, 0}};
        cr_assert_eq(pthread_create(&ids[i], &attr, run_thread, &threads[i]), 0);
    }
    for (unsigned i = 0; i < n; i++)
        pthread_join(ids[i], NULL);
    pthread_attr_destroy(&attr);
    pthread_barrier_destroy(&block_barrier);
    for (unsigned w = 0; w < warps; w++)
        pthread_barrier_destroy(&warp_barriers[w]);
    free(threads);
    free(ids);
}

// body<<<grid, block>>>(arg), the blocks one after another.
static void emulated_launch(EmulatedDim3 grid, EmulatedDim3 block, void (*body)(void*), void* arg) {
    emulated_block_dim = block;
    for (unsigned by = 0; by < grid.y; by++)
        for (unsigned bx = 0; bx < grid.x; bx++)
            run_block(block, bx, by, body, arg);
}

// ----------------------------------------------------------------------------
// the fused batch against the CPU twin's calls

typedef struct {
    const FusedArgs* args;
    float* shared; // fused_shared_bytes(H, B): the kernel's extern __shared__
} FusedRun;

// fused_batch_kernel's body.
static void fused_body(void* arg) {
    FusedRun* run = arg;
    fused_batch(run->args, run->shared);
}

#define TOLERANCE 1e-5
#define DATA_SIZE 200
#define SEED 5

// Expects max|got - want| / max|want| <= TOLERANCE over n floats, naming the worst.
static void expect_close(const float* got, const float* want, int n, const char* what) {
    double max_diff = 0.0, max_want = 0.0;
    int worst = 0;
    for (int i = 0; i < n; i++) {
        double diff = fabs((double)got[i] - want[i]);
        if (isnan(diff) || diff > max_diff)
            max_diff = isnan(diff) ? INFINITY : diff, worst = i;
        max_want = fmax(max_want, fabs((double)want[i]));
    }
    cr_expect(max_diff <= TOLERANCE * fmax(max_want, 1e-30),
              "%s: element %d: fused %.9g, cpu %.9g; max difference %.3g, max |cpu| %.3g", what,
              worst, got[worst], want[worst], max_diff, max_want);
}

// One batch of B rows at hidden H: pass (FAST_LOSS, _GRADIENTS or _STEP, with optimizer) by
// the emulated block, and the same by kernels_cpu's calls, from the same state.
static void check_batch(int H, int B, FastPass pass, OptimizerKind optimizer) {
    Dataset data;
    Mlp m;
    cr_assert_eq(dataset_create(&data, DATA_SIZE, SEED), 0);
    cr_assert_eq(mlp_create(&m, &kernels_cpu, H, B), 0);
    cr_assert_eq(mlp_init_params(&m, SEED), 0);
    int P = m.num_params, first = 3;
    int* indices = malloc((size_t)(first + B) * sizeof(int));
    float* copies = calloc(4 * (size_t)P + 1, sizeof(float)); // params, grads, m, v, loss
    cr_assert(indices != NULL && copies != NULL);
    for (int i = 0; i < first + B; i++)
        indices[i] = (i * 37 + 11) % data.n_train;
    // a state as after some steps: moments not zero, the loss sum already started
    for (int i = 0; i < P; i++)
        m.opt_m[i] = 0.01f * sinf((float)i), m.opt_v[i] = 1e-4f * (1.5f + cosf((float)i));
    *m.loss = 0.25f;
    memcpy(copies, m.params, (size_t)P * sizeof(float));
    memcpy(copies + 2 * P, m.opt_m, (size_t)P * sizeof(float));
    memcpy(copies + 3 * P, m.opt_v, (size_t)P * sizeof(float));
    copies[4 * P] = 0.25f;

    Optimizer opt = {optimizer, 0.01f, 0.9f, 6};
    AdamSettings s = {0.01f, 0.9f, 0.999f, 1e-8f, 7}; // mlp.c's, for the step after opt's 6
    FusedArgs a = {0};
    a.params = copies, a.grads = copies + P, a.opt_m = copies + 2 * P, a.opt_v = copies + 3 * P;
    a.data_x = data.x, a.data_y = data.y, a.indices = indices + first;
    a.loss = copies + 4 * P, a.loss_scale = 0.5f, a.B = B, a.H = H, a.P = P, a.pass = pass;
    a.optimizer = optimizer, a.beta1 = s.beta1, a.beta2 = s.beta2;
    adam_scalars(s, &a.step_size, &a.eps);
    a.learning_rate = s.learning_rate, a.momentum = 0.9f;
    FusedRun run = {&a, malloc(fused_shared_bytes(H, B))};
    cr_assert_not_null(run.shared);
    emulated_launch((EmulatedDim3){1, 1, 1}, (EmulatedDim3){FUSED_THREADS, 1, 1}, fused_body, &run);
    free(run.shared);

    MlpBatch batch = {data.x, data.y, indices, first, B, 0.5f};
    if (pass == FAST_LOSS)
        cr_assert_eq(mlp_batch_loss(&m, &batch), 0);
    else if (pass == FAST_GRADIENTS)
        cr_assert_eq(mlp_batch_gradients(&m, &batch), 0);
    else
        cr_assert_eq(mlp_train_step(&m, &opt, &batch), 0);
    char what[96];
    snprintf(what, sizeof what, "H=%d B=%d pass %d optimizer %d: loss", H, B, pass, optimizer);
    expect_close(copies + 4 * P, m.loss, 1, what);
    if (pass != FAST_LOSS) {
        snprintf(what, sizeof what, "H=%d B=%d pass %d: gradients", H, B, pass);
        expect_close(copies + P, m.grads, P, what);
    }
    if (pass == FAST_STEP) {
        const float* got[] = {copies + 2 * P, copies + 3 * P, copies};
        const float* want[] = {m.opt_m, m.opt_v, m.params};
        const char* names[] = {"first moments", "second moments", "parameters"};
        for (int i = 0; i < 3; i++) {
            snprintf(what, sizeof what, "H=%d B=%d, optimizer %d: %s", H, B, optimizer, names[i]);
            expect_close(got[i], want[i], P, what);
        }
    }
    free(indices);
    free(copies);
    mlp_free(&m);
    dataset_free(&data);
}

// The shapes: the defaults; a width that is not a multiple of the warp and a batch smaller
// than the block's 16 warps; one row, one feature; rows that wrap round the warps.
static const int SHAPES[][2] = {{64, 32}, {65, 7}, {1, 1}, {33, 40}};

Test(fused_emulated, the_forward_pass_and_loss_match_the_cpu_twin, .timeout = 120) {
    for (int i = 0; i < 4; i++)
        check_batch(SHAPES[i][0], SHAPES[i][1], FAST_LOSS, OPTIMIZER_ADAM);
}

Test(fused_emulated, the_gradients_match_the_cpu_twin, .timeout = 120) {
    for (int i = 0; i < 4; i++)
        check_batch(SHAPES[i][0], SHAPES[i][1], FAST_GRADIENTS, OPTIMIZER_ADAM);
}

Test(fused_emulated, a_whole_step_with_adam_or_sgd_matches_the_cpu_twin, .timeout = 120) {
    for (int i = 0; i < 4; i++) {
        check_batch(SHAPES[i][0], SHAPES[i][1], FAST_STEP, OPTIMIZER_ADAM);
        check_batch(SHAPES[i][0], SHAPES[i][1], FAST_STEP, OPTIMIZER_SGD);
    }
}

// ----------------------------------------------------------------------------
// the linear layer's tiles against the reference loops

typedef struct {
    float* out;
    const float *inp, *w, *bias;
    int B, C, OC;
} LinearRun;

// linear_forward_kernel's body.
static void linear_body(void* arg) {
    LinearRun* r = arg;
    linear_forward_tile(r->out, r->inp, r->w, r->bias, r->B, r->C, r->OC, threadIdx.x, threadIdx.y,
                        blockIdx.x, blockIdx.y);
}

// n whole numbers in [-4, 4]: every product and sum of the layer is exact in float, so any
// order of the additions gives the same bits.
static float* whole_numbers(size_t n, unsigned seed) {
    float* v = malloc((n > 0 ? n : 1) * sizeof(float));
    cr_assert_not_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = (float)((int)((i * 2654435761u + seed * 40503u) % 9u) - 4);
    return v;
}

Test(linear_emulated, the_tiled_forward_pass_equals_the_reference_at_every_tile_edge,
     .timeout = 120) {
    const int batches[] = {1, 7, 33}, widths[] = {1, 16, 17, 65};
    for (int bi = 0; bi < 3; bi++)
        for (int ci = 0; ci < 4; ci++)
            for (int oi = 0; oi < 4; oi++) {
                int B = batches[bi], C = widths[ci], OC = widths[oi];
                float* inp = whole_numbers((size_t)B * C, 1);
                float* w = whole_numbers((size_t)OC * C, 2);
                float* bias = whole_numbers(OC, 3);
                float* got = whole_numbers((size_t)B * OC, 4); // overwritten
                float* want = whole_numbers((size_t)B * OC, 5);
                LinearRun r = {got, inp, w, bias, B, C, OC};
                EmulatedDim3 grid = {(B + LINEAR_TILE - 1) / LINEAR_TILE,
                                     (OC + LINEAR_TILE - 1) / LINEAR_TILE, 1};
                emulated_launch(grid, (EmulatedDim3){LINEAR_TILE, LINEAR_TILE, 1}, linear_body, &r);
                cr_assert_eq(kernels_cpu_naive.linear_forward(want, inp, w, bias, B, C, OC), 0);
                for (int i = 0; i < B * OC; i++)
                    cr_assert_eq(got[i], want[i], "B=%d C=%d OC=%d: out[%d][%d] = %g, not %g", B, C,
                                 OC, i / OC, i % OC, got[i], want[i]);
                float* all[] = {inp, w, bias, got, want};
                for (int i = 0; i < 5; i++)
                    free(all[i]);
            }
}
