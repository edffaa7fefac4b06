/*
 * test_fused_emulated.c - the fused kernel's code (common/fused_batch.cuh) run on the CPU,
 * one POSIX thread per CUDA thread, against the CPU twin.
 *
 * No GPU is needed: the few CUDA names that the code uses are emulated here. threadIdx is
 * a thread-local variable, __syncthreads a barrier of the block's FUSED_THREADS threads, and
 * the warp's shuffle an exchange through memory between two barriers of the warp's 32
 * threads. So the test checks what a GPU would: every index (a wrong one reads the wrong
 * element, which the comparison with the CPU finds), every phase's barrier (a missing one
 * lets a thread read what another has not written yet; a barrier that not every thread
 * reaches, or a shuffle that not every lane of a warp reaches, hangs until the test's
 * timeout), and the sums themselves. What it cannot check is the GPU's own behaviour:
 * the launch, shared memory's limits, the compiler's fused multiply-adds (the tolerance
 * covers them). tests/gpu/test_fast_step.cu runs the real kernel on a GPU.
 *
 * Shapes: B batch rows, H hidden features, P parameters.
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
#define __device__ inline
#define __host__

typedef struct {
    unsigned x, y, z;
} EmulatedDim3;

static _Thread_local EmulatedDim3 emulated_thread_idx;
static const EmulatedDim3 emulated_block_idx = {0, 0, 0};
static const EmulatedDim3 emulated_block_dim = {512, 1, 1}; // FUSED_THREADS, checked below
#define threadIdx emulated_thread_idx
#define blockIdx emulated_block_idx
#define blockDim emulated_block_dim

static pthread_barrier_t block_barrier;
static pthread_barrier_t warp_barriers[16];
static float warp_values[16][32];

static void emulated_syncthreads(void) {
    pthread_barrier_wait(&block_barrier);
}

// The value of the lane `offset` away, as __shfl_xor_sync gives it: every lane of the warp
// leaves its value, waits for all of them, takes its partner's, waits again.
static float emulated_shfl_xor(unsigned mask, float v, int offset) {
    (void)mask;
    unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    warp_values[warp][lane] = v;
    pthread_barrier_wait(&warp_barriers[warp]);
    float partner = warp_values[warp][lane ^ (unsigned)offset];
    pthread_barrier_wait(&warp_barriers[warp]);
    return partner;
}

#define __syncthreads() emulated_syncthreads()
#define __shfl_xor_sync(mask, v, offset) emulated_shfl_xor((mask), (v), (offset))

#include "fused_batch.cuh"

_Static_assert(FUSED_THREADS == 512 && FUSED_WARPS == 16, "the emulation's sizes");

// ----------------------------------------------------------------------------
// a block, run

typedef struct {
    const FusedArgs* args;
    float* shared;
    unsigned thread;
} EmulatedThread;

static void* run_thread(void* arg) {
    EmulatedThread* t = arg;
    threadIdx.x = t->thread;
    fused_batch(t->args, t->shared);
    return NULL;
}

// fused_batch(a) by FUSED_THREADS threads, as one block of the kernel would run it.
static void run_block(const FusedArgs* a) {
    float* shared = malloc(fused_shared_bytes(a->H, a->B));
    EmulatedThread threads[FUSED_THREADS];
    pthread_t ids[FUSED_THREADS];
    pthread_attr_t attr;
    cr_assert_not_null(shared);
    cr_assert_eq(pthread_barrier_init(&block_barrier, NULL, FUSED_THREADS), 0);
    for (int w = 0; w < FUSED_WARPS; w++)
        cr_assert_eq(pthread_barrier_init(&warp_barriers[w], NULL, 32), 0);
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (unsigned i = 0; i < FUSED_THREADS; i++) {
        threads[i] = (EmulatedThread){a, shared, i};
        cr_assert_eq(pthread_create(&ids[i], &attr, run_thread, &threads[i]), 0);
    }
    for (int i = 0; i < FUSED_THREADS; i++)
        pthread_join(ids[i], NULL);
    pthread_attr_destroy(&attr);
    pthread_barrier_destroy(&block_barrier);
    for (int w = 0; w < FUSED_WARPS; w++)
        pthread_barrier_destroy(&warp_barriers[w]);
    free(shared);
}

// ----------------------------------------------------------------------------
// the fused batch against the CPU twin's calls

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
    run_block(&a);

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
