/*
 * test_fast_step.cu - every way a GPU runs a batch (--kernels unfused, graph, fused) against
 * the CPU twin, over whole epochs of lesson 01's training (common/fast_step.h, common/mlp.h).
 *
 * Each run trains a fresh model as lesson 01 does (the sampler's shuffle, whole batches with
 * mlp_train_step, the eval batches with mlp_batch_loss, the loss sums taken per epoch) and
 * keeps every epoch's losses and the final parameters. Required, for each variant: 3 epochs
 * within LOSS_TOLERANCE of the CPU's losses (relative) and within PARAMS_TOLERANCE of its
 * parameters (normwise); the same bits on a second run; and a run resumed from the state
 * after 2 epochs (as a checkpoint holds it) equal to the unbroken run, bit for bit. Shapes
 * include a batch that does not divide the training set (a shorter last batch, a graph of
 * its own) and the largest hidden size that the fused kernel must take (128).
 *
 * Without a GPU every test skips. Run with --jobs 1: the tests share one device.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "device.h"
#include "fast_step.h"
#include "kernels.h"
#include "mlp.h"

// The relative difference allowed between a GPU run's losses and the CPU's, per epoch.
#define LOSS_TOLERANCE 1e-5
// ... and between their parameters after the last epoch (normwise: max diff / max |cpu|).
#define PARAMS_TOLERANCE 1e-4
#define EPOCHS 3
#define DATA_SIZE 2000
#define SEED 42
#define MAX_EPOCHS 8

#define SKIP_WITHOUT_GPU()                                                                         \
    do {                                                                                           \
        if (device_gpu_count() == 0)                                                               \
            cr_skip_test("no GPU: the CUDA kernels cannot run here");                              \
    } while (0)

// ----------------------------------------------------------------------------
// a training run, as lesson 01's

typedef struct {
    const Kernels* k;
    MlpKernels kernels;
    OptimizerKind optimizer;
    int hidden, batch;
} RunSpec;

typedef struct {
    float losses[MAX_EPOCHS][2]; // train, eval
    float* params;               // (num_params)
    int num_params;
} RunResult;

typedef struct {
    float* x; // (DATA_SIZE) on the run's device
    float* y;
    int* train_indices; // (num_samples)
    int* eval_indices;  // (n_eval)
    int n_eval;
} RunData;

static void run_data_create(RunData* d, const Kernels* k, const Dataset* data, const Sampler* s) {
    int n = data->n_train + data->n_eval;
    d->n_eval = data->n_eval;
    d->x = (float*)k->alloc((size_t)n * sizeof(float));
    d->y = (float*)k->alloc((size_t)n * sizeof(float));
    d->train_indices = (int*)k->alloc((size_t)s->num_samples * sizeof(int));
    d->eval_indices = (int*)k->alloc((size_t)d->n_eval * sizeof(int));
    cr_assert(d->x && d->y && d->train_indices && d->eval_indices, "%s: out of memory", k->name);
    int* order = (int*)malloc((size_t)d->n_eval * sizeof(int));
    cr_assert_not_null(order);
    for (int i = 0; i < d->n_eval; i++)
        order[i] = data->n_train + i;
    cr_assert_eq(k->upload(d->x, data->x, (size_t)n * sizeof(float)), 0);
    cr_assert_eq(k->upload(d->y, data->y, (size_t)n * sizeof(float)), 0);
    cr_assert_eq(k->upload(d->eval_indices, order, (size_t)d->n_eval * sizeof(int)), 0);
    free(order);
}

static void run_data_free(RunData* d, const Kernels* k) {
    void* all[] = {d->x, d->y, d->train_indices, d->eval_indices};
    for (int i = 0; i < 4; i++)
        k->release(all[i]);
}

// One epoch of training and evaluation; losses[0] train, losses[1] eval.
static void run_epoch(Mlp* m, Optimizer* opt, Sampler* s, const RunData* d, int epoch, int batch,
                      float losses[2]) {
    sampler_set_epoch(s, epoch);
    cr_assert_eq(m->k->upload(d->train_indices, s->indices, s->num_samples * sizeof(int)), 0);
    int steps = (s->num_samples + batch - 1) / batch;
    for (int step = 0; step < steps; step++) {
        int first = step * batch;
        int B = s->num_samples - first < batch ? s->num_samples - first : batch;
        MlpBatch b = {d->x, d->y, d->train_indices, first, B, 1.0f / ((float)B * steps)};
        cr_assert_eq(mlp_train_step(m, opt, &b), 0, "epoch %d, step %d", epoch, step);
    }
    cr_assert_eq(mlp_take_loss(m, &losses[0]), 0, "epoch %d: train loss", epoch);
    for (int first = 0; first < d->n_eval; first += batch) {
        int B = d->n_eval - first < batch ? d->n_eval - first : batch;
        MlpBatch b = {d->x, d->y, d->eval_indices, first, B, 1.0f / d->n_eval};
        cr_assert_eq(mlp_batch_loss(m, &b), 0, "epoch %d, eval at %d", epoch, first);
    }
    cr_assert_eq(mlp_take_loss(m, &losses[1]), 0, "epoch %d: eval loss", epoch);
}

// A fresh model trained epochs [0, epochs); with resume_after > 0, the state after that
// many epochs moves to a second fresh model (params, moments, step), which trains the rest.
static RunResult run(const RunSpec* spec, int epochs, int resume_after) {
    Dataset data;
    Sampler s;
    RunData d;
    Mlp m;
    cr_assert_eq(dataset_create(&data, DATA_SIZE, SEED), 0);
    cr_assert_eq(sampler_create(&s, data.n_train, 1, 0, SEED), 0);
    run_data_create(&d, spec->k, &data, &s);
    cr_assert_eq(mlp_create(&m, spec->k, spec->hidden, spec->batch), 0);
    cr_assert_eq(mlp_use_kernels(&m, spec->kernels), 0, "--kernels %s",
                 mlp_kernels_name(spec->kernels));
    cr_assert_eq(mlp_init_params(&m, SEED), 0);
    Optimizer opt = {spec->optimizer, 0.01f, 0.9f, 0};
    RunResult r;
    r.num_params = m.num_params;
    size_t bytes = (size_t)m.num_params * sizeof(float);
    r.params = (float*)malloc(bytes);
    float* moments = (float*)malloc(2 * bytes);
    cr_assert(r.params != NULL && moments != NULL);
    for (int epoch = 0; epoch < epochs; epoch++) {
        if (resume_after > 0 && epoch == resume_after) { // a checkpoint's round trip
            cr_assert_eq(mlp_get_state(&m, r.params, moments, moments + m.num_params), 0);
            mlp_free(&m);
            cr_assert_eq(mlp_create(&m, spec->k, spec->hidden, spec->batch), 0);
            cr_assert_eq(mlp_use_kernels(&m, spec->kernels), 0);
            cr_assert_eq(mlp_set_state(&m, r.params, moments, moments + m.num_params), 0);
        }
        run_epoch(&m, &opt, &s, &d, epoch, spec->batch, r.losses[epoch]);
    }
    cr_assert_eq(mlp_get_params(&m, r.params), 0);
    free(moments);
    mlp_free(&m);
    run_data_free(&d, spec->k);
    sampler_free(&s);
    dataset_free(&data);
    return r;
}

// ----------------------------------------------------------------------------
// comparisons

static const char* spec_name(const RunSpec* spec, char* out, size_t len) {
    snprintf(out, len, "%s/%s, %s, H=%d, B=%d", spec->k->name, mlp_kernels_name(spec->kernels),
             spec->optimizer == OPTIMIZER_SGD ? "sgd" : "adam", spec->hidden, spec->batch);
    return out;
}

// max |gpu - cpu| / max |cpu| over n values (infinite where gpu has a NaN), and where the
// largest difference is, in *worst.
static double normwise_difference(const float* gpu, const float* cpu, int n, int* worst) {
    double max_diff = 0.0, max_cpu = 0.0;
    *worst = 0;
    for (int i = 0; i < n; i++) {
        double diff = fabs((double)gpu[i] - cpu[i]);
        if (isnan(diff) || diff > max_diff)
            max_diff = isnan(diff) ? INFINITY : diff, *worst = i;
        max_cpu = fmax(max_cpu, fabs((double)cpu[i]));
    }
    return max_diff / max_cpu;
}

// Every epoch's losses within LOSS_TOLERANCE, the parameters within PARAMS_TOLERANCE.
static void expect_close_runs(const RunResult* gpu, const RunResult* cpu, const char* what) {
    for (int e = 0; e < EPOCHS; e++)
        for (int j = 0; j < 2; j++) {
            double g = gpu->losses[e][j], c = cpu->losses[e][j];
            double relative = fabs(g - c) / fmax(fabs(c), 1e-30);
            cr_expect(relative <= LOSS_TOLERANCE,
                      "%s: epoch %d %s loss: gpu %.9g, cpu %.9g, relative %.3g > %.0e", what, e + 1,
                      j == 0 ? "train" : "eval", g, c, relative, LOSS_TOLERANCE);
        }
    int worst;
    double difference = normwise_difference(gpu->params, cpu->params, cpu->num_params, &worst);
    cr_expect(difference <= PARAMS_TOLERANCE,
              "%s: parameter %d: gpu %.9g, cpu %.9g; max |gpu - cpu| / max |cpu| = %.3g > %.0e",
              what, worst, gpu->params[worst], cpu->params[worst], difference, PARAMS_TOLERANCE);
}

// The same bits: every loss and every parameter.
static void expect_identical_runs(const RunResult* a, const RunResult* b, const char* what) {
    for (int e = 0; e < EPOCHS; e++)
        cr_expect(memcmp(a->losses[e], b->losses[e], sizeof a->losses[e]) == 0,
                  "%s: epoch %d: losses %.9g %.9g, then %.9g %.9g", what, e + 1, a->losses[e][0],
                  a->losses[e][1], b->losses[e][0], b->losses[e][1]);
    for (int i = 0; i < a->num_params; i++)
        if (memcmp(&a->params[i], &b->params[i], sizeof(float)) != 0) {
            cr_expect(false, "%s: parameter %d: %.9g, then %.9g", what, i, a->params[i],
                      b->params[i]);
            return;
        }
}

// The variant against the CPU, against itself, and resumed against unbroken.
static void check_variant(MlpKernels kernels, OptimizerKind optimizer, int hidden, int batch) {
    SKIP_WITHOUT_GPU();
    RunSpec cpu_spec = {&kernels_cpu, MLP_KERNELS_UNFUSED, optimizer, hidden, batch};
    RunSpec gpu_spec = {&kernels_cuda, kernels, optimizer, hidden, batch};
    char what[128], twice[160], resumed[160];
    spec_name(&gpu_spec, what, sizeof what);
    snprintf(twice, sizeof twice, "%s, run twice", what);
    snprintf(resumed, sizeof resumed, "%s, resumed after 2 epochs", what);
    RunResult cpu = run(&cpu_spec, EPOCHS, 0);
    RunResult gpu = run(&gpu_spec, EPOCHS, 0);
    RunResult again = run(&gpu_spec, EPOCHS, 0);
    RunResult resume = run(&gpu_spec, EPOCHS, 2);
    expect_close_runs(&gpu, &cpu, what);
    expect_identical_runs(&gpu, &again, twice);
    expect_identical_runs(&gpu, &resume, resumed);
    RunResult* all[] = {&cpu, &gpu, &again, &resume};
    for (int i = 0; i < 4; i++)
        free(all[i]->params);
}

// ----------------------------------------------------------------------------
// gradients alone: lessons 02-04 all-reduce them between the backward pass and the update

// Batches of five sizes (a graph each, one more than a FastStep keeps: the oldest ones are
// captured again), graphs replayed at starts that do not follow from their replay before (the
// cursor is set) and, for the last two, at starts that do (it advances).
#define GRADIENT_BATCHES 12
static const int GRADIENT_B[GRADIENT_BATCHES] = {32, 7, 32, 7, 31, 5, 3, 32, 7, 32, 32, 32};

typedef struct {
    Mlp m;
    RunData d;
    float* grads; // (num_params) on the host
} GradientRun;

static void gradient_run_create(GradientRun* g, const Kernels* k, MlpKernels kernels, int hidden,
                                const Dataset* data, Sampler* s) {
    run_data_create(&g->d, k, data, s);
    cr_assert_eq(k->upload(g->d.train_indices, s->indices, s->num_samples * sizeof(int)), 0);
    cr_assert_eq(mlp_create(&g->m, k, hidden, 32), 0);
    cr_assert_eq(mlp_use_kernels(&g->m, kernels), 0, "--kernels %s", mlp_kernels_name(kernels));
    cr_assert_eq(mlp_init_params(&g->m, SEED), 0);
    g->grads = (float*)malloc((size_t)g->m.num_params * sizeof(float));
    cr_assert_not_null(g->grads);
}

// Where batch i starts: apart from the batch before, but for the last two.
static int gradient_first(int i) {
    return i < GRADIENT_BATCHES - 2 ? i * 97 % 1000 : gradient_first(i - 1) + GRADIENT_B[i - 1];
}

// Batch i's gradients (into g->grads) and its loss.
static float gradient_run_batch(GradientRun* g, int i) {
    int first = gradient_first(i);
    MlpBatch b = {g->d.x, g->d.y, g->d.train_indices, first, GRADIENT_B[i], 1.0f / GRADIENT_B[i]};
    float loss = 0.0f;
    cr_assert_eq(mlp_batch_gradients(&g->m, &b), 0, "batch %d", i);
    cr_assert_eq(mlp_take_loss(&g->m, &loss), 0, "batch %d: loss", i);
    cr_assert_eq(g->m.k->download(g->grads, g->m.grads, (size_t)g->m.num_params * sizeof(float)),
                 0);
    return loss;
}

static void gradient_run_free(GradientRun* g) {
    const Kernels* k = g->m.k;
    free(g->grads);
    mlp_free(&g->m);
    run_data_free(&g->d, k);
}

static void check_gradients(MlpKernels kernels, int hidden) {
    SKIP_WITHOUT_GPU();
    Dataset data;
    Sampler s;
    cr_assert_eq(dataset_create(&data, DATA_SIZE, SEED), 0);
    cr_assert_eq(sampler_create(&s, data.n_train, 1, 0, SEED), 0);
    sampler_set_epoch(&s, 0);
    GradientRun cpu, gpu;
    gradient_run_create(&cpu, &kernels_cpu, MLP_KERNELS_UNFUSED, hidden, &data, &s);
    gradient_run_create(&gpu, &kernels_cuda, kernels, hidden, &data, &s);
    for (int i = 0; i < GRADIENT_BATCHES; i++) {
        float c = gradient_run_batch(&cpu, i), g = gradient_run_batch(&gpu, i);
        cr_expect(fabs((double)g - c) <= LOSS_TOLERANCE * fabs((double)c),
                  "--kernels %s, H=%d, batch %d (B=%d): loss gpu %.9g, cpu %.9g",
                  mlp_kernels_name(kernels), hidden, i, GRADIENT_B[i], g, c);
        int worst;
        double difference = normwise_difference(gpu.grads, cpu.grads, cpu.m.num_params, &worst);
        cr_expect(difference <= PARAMS_TOLERANCE,
                  "--kernels %s, H=%d, batch %d (B=%d): gradient %d: gpu %.9g, cpu %.9g; "
                  "max |gpu - cpu| / max |cpu| = %.3g > %.0e",
                  mlp_kernels_name(kernels), hidden, i, GRADIENT_B[i], worst, gpu.grads[worst],
                  cpu.grads[worst], difference, PARAMS_TOLERANCE);
    }
    gradient_run_free(&cpu);
    gradient_run_free(&gpu);
    sampler_free(&s);
    dataset_free(&data);
}

Test(fast_step, every_variant_computes_the_cpu_gradients_alone_through_five_graphs) {
    check_gradients(MLP_KERNELS_UNFUSED, 64);
    check_gradients(MLP_KERNELS_GRAPH, 64);
    check_gradients(MLP_KERNELS_FUSED, 64);
    check_gradients(MLP_KERNELS_GRAPH, 65);
}

// ----------------------------------------------------------------------------
// the variants

Test(fast_step, unfused_kernels_train_as_the_cpu_run_to_run_and_resumed) {
    check_variant(MLP_KERNELS_UNFUSED, OPTIMIZER_ADAM, 64, 32);
}

Test(fast_step, the_graph_trains_as_the_cpu_run_to_run_and_resumed) {
    check_variant(MLP_KERNELS_GRAPH, OPTIMIZER_ADAM, 64, 32);
}

Test(fast_step, the_fused_kernel_trains_as_the_cpu_run_to_run_and_resumed) {
    check_variant(MLP_KERNELS_FUSED, OPTIMIZER_ADAM, 64, 32);
}

Test(fast_step, the_graph_and_the_fused_kernel_take_a_shorter_last_batch_and_sgd) {
    // 1600 samples in batches of 48: 33 of 48 and one of 16, eval 8 of 48 and one of 16
    check_variant(MLP_KERNELS_GRAPH, OPTIMIZER_SGD, 64, 48);
    check_variant(MLP_KERNELS_FUSED, OPTIMIZER_SGD, 64, 48);
}

Test(fast_step, the_fused_kernel_takes_hidden_128_and_odd_widths) {
    check_variant(MLP_KERNELS_FUSED, OPTIMIZER_ADAM, 128, 32);
    check_variant(MLP_KERNELS_FUSED, OPTIMIZER_ADAM, 65, 15);
    check_variant(MLP_KERNELS_GRAPH, OPTIMIZER_ADAM, 65, 15);
}

Test(fast_step, the_gpu_chooses_fused_at_the_defaults_and_refuses_it_where_it_does_not_fit) {
    SKIP_WITHOUT_GPU();
    MlpKernels chosen;
    char why[512];
    size_t shared = mlp_gpu_shared_bytes();
    cr_assert_gt(shared, 0, "the GPU's shared memory per block is unknown");
    cr_assert_eq(
        mlp_kernels_choose(MLP_KERNELS_AUTO, true, shared, 64, 32, &chosen, why, sizeof why), 0,
        "%s", why);
    cr_expect_eq(chosen, MLP_KERNELS_FUSED, "auto chose %s at the defaults (%zu bytes of shared)",
                 mlp_kernels_name(chosen), shared);
    Mlp m;
    cr_assert_eq(mlp_create(&m, &kernels_cuda, 1024, 32), 0);
    cr_expect_eq(mlp_use_kernels(&m, MLP_KERNELS_FUSED), -1, "hidden 1024 was taken as fused");
    cr_expect_null(m.fast);
    mlp_free(&m);
}

// ----------------------------------------------------------------------------
// launch sizes

// relu_forward over INT_MAX elements: the last block's threads reach past INT_MAX, which the
// launch sizes and thread indices must count in 64 bits (about 17 GB of GPU memory).
Test(fast_step, an_elementwise_kernel_reaches_the_last_of_int_max_elements) {
    SKIP_WITHOUT_GPU();
    const int N = 2147483647;
    size_t bytes = (size_t)N * sizeof(float);
    float* inp = NULL;
    float* out = NULL;
    if (cudaMalloc((void**)&inp, bytes) != cudaSuccess ||
        cudaMalloc((void**)&out, bytes) != cudaSuccess) {
        cudaFree(inp);
        cudaGetLastError();
        cr_skip_test("not enough GPU memory for 2 x %zu bytes", bytes);
    }
    float ends[2] = {2.0f, -1.0f}, back[2] = {-9.0f, -9.0f}, first = 3.0f, got_first = 0.0f;
    cr_assert_eq(kernels_cuda.upload(inp, &first, sizeof first), 0);
    cr_assert_eq(kernels_cuda.upload(inp + N - 2, ends, sizeof ends), 0);
    cr_assert_eq(kernels_cuda.relu_forward(out, inp, N), 0);
    cr_assert_eq(kernels_cuda.download(back, out + N - 2, sizeof back), 0);
    cr_assert_eq(kernels_cuda.download(&got_first, out, sizeof got_first), 0);
    cr_assert_eq(kernels_cuda.synchronize(), 0);
    cr_expect(back[0] == 2.0f && back[1] == 0.0f && got_first == 3.0f,
              "relu of 3, ..., 2, -1: got %g, ..., %g, %g", got_first, back[0], back[1]);
    cudaFree(inp);
    cudaFree(out);
}
