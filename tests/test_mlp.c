/*
 * test_mlp.c - what --kernels chooses (common/mlp.h, common/fast_step.h), and the whole-batch
 * functions on the CPU against the step-by-step calls they stand for.
 *
 * The choice is a pure function of the request, the device and the model's size, so every
 * branch of it runs here, GPU or not (a GPU's shared memory is passed in). The GPU's graph
 * and fused kernels themselves are checked against the CPU in tests/gpu/test_fast_step.cu.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "data.h"
#include "fast_step.h"
#include "kernels.h"
#include "mlp.h"

// Shared memory per block (opted in) of two GPUs: an H100 or H200 (sm_90), and an RTX 4090
// (sm_89), the smallest of the GPUs the Makefile builds for besides Turing.
#define SHARED_SM90 (227 * 1024)
#define SHARED_SM89 (99 * 1024)

// ----------------------------------------------------------------------------
// the choice

// mlp_kernels_choose must accept request and choose want.
static void expect_chosen(MlpKernels request, bool on_gpu, size_t shared, int H, int B,
                          MlpKernels want) {
    MlpKernels chosen = MLP_KERNELS_AUTO;
    char why[ERROR_TEXT_BYTES] = "";
    int rc = mlp_kernels_choose(request, on_gpu, shared, H, B, &chosen, why, sizeof why);
    cr_assert_eq(rc, 0, "--kernels %s (%s, H=%d, B=%d) refused: %s", mlp_kernels_name(request),
                 on_gpu ? "gpu" : "cpu", H, B, why);
    cr_assert_eq(chosen, want, "--kernels %s (%s, H=%d, B=%d): chose %s, want %s",
                 mlp_kernels_name(request), on_gpu ? "gpu" : "cpu", H, B, mlp_kernels_name(chosen),
                 mlp_kernels_name(want));
}

// mlp_kernels_choose must refuse request with one line that contains each of words.
static void expect_refused(MlpKernels request, bool on_gpu, size_t shared, int H, int B,
                           const char* const* words) {
    MlpKernels chosen = MLP_KERNELS_AUTO;
    char why[ERROR_TEXT_BYTES] = "";
    int rc = mlp_kernels_choose(request, on_gpu, shared, H, B, &chosen, why, sizeof why);
    cr_assert_eq(rc, -1, "--kernels %s (%s, H=%d, B=%d) was accepted as %s",
                 mlp_kernels_name(request), on_gpu ? "gpu" : "cpu", H, B, mlp_kernels_name(chosen));
    cr_assert(why[0] != '\0' && strchr(why, '\n') == NULL, "want one line, got '%s'", why);
    for (int i = 0; words[i] != NULL; i++)
        cr_assert_not_null(strstr(why, words[i]), "the reason does not say '%s': %s", words[i],
                           why);
}

Test(mlp_kernels, on_the_cpu_auto_and_unfused_are_the_cpus_own_functions) {
    expect_chosen(MLP_KERNELS_AUTO, false, 0, 64, 32, MLP_KERNELS_UNFUSED);
    expect_chosen(MLP_KERNELS_UNFUSED, false, 0, 64, 32, MLP_KERNELS_UNFUSED);
    char text[128];
    mlp_kernels_describe(MLP_KERNELS_AUTO, MLP_KERNELS_UNFUSED, false, text, sizeof text);
    cr_assert_str_eq(text, "cpu");
}

Test(mlp_kernels, graph_and_fused_are_refused_on_the_cpu_naming_the_flag) {
    expect_refused(MLP_KERNELS_GRAPH, false, 0, 64, 32,
                   (const char*[]){"--kernels graph", "needs a GPU", NULL});
    expect_refused(MLP_KERNELS_FUSED, false, 0, 64, 32,
                   (const char*[]){"--kernels fused", "needs a GPU", NULL});
    char why[ERROR_TEXT_BYTES];
    cr_assert_eq(mlp_kernels_check(MLP_KERNELS_FUSED, false, why, sizeof why), -1);
    cr_assert_eq(mlp_kernels_check(MLP_KERNELS_FUSED, true, why, sizeof why), 0);
    cr_assert_eq(mlp_kernels_check(MLP_KERNELS_AUTO, false, why, sizeof why), 0);
}

Test(mlp_kernels, auto_on_a_gpu_is_fused_up_to_hidden_128_at_the_default_batch) {
    int hidden[] = {1, 64, 65, 128};
    for (int i = 0; i < 4; i++)
        expect_chosen(MLP_KERNELS_AUTO, true, SHARED_SM90, hidden[i], 32, MLP_KERNELS_FUSED);
    // the defaults fit even the smaller GPU's shared memory
    expect_chosen(MLP_KERNELS_AUTO, true, SHARED_SM89, 64, 32, MLP_KERNELS_FUSED);
    char text[128];
    mlp_kernels_describe(MLP_KERNELS_AUTO, MLP_KERNELS_FUSED, true, text, sizeof text);
    cr_assert_str_eq(text, "fused (auto: the model fits one block's shared memory)");
}

Test(mlp_kernels, auto_on_a_gpu_is_the_graph_where_the_model_does_not_fit_one_block) {
    expect_chosen(MLP_KERNELS_AUTO, true, SHARED_SM90, 512, 32, MLP_KERNELS_GRAPH);
    expect_chosen(MLP_KERNELS_AUTO, true, SHARED_SM90, 64, 4096, MLP_KERNELS_GRAPH);
    expect_chosen(MLP_KERNELS_AUTO, true, SHARED_SM89, 128, 32, MLP_KERNELS_GRAPH);
    char text[128];
    mlp_kernels_describe(MLP_KERNELS_AUTO, MLP_KERNELS_GRAPH, true, text, sizeof text);
    cr_assert_str_eq(text, "graph (auto: the model does not fit one block's shared memory)");
}

Test(mlp_kernels, what_a_user_names_on_a_gpu_is_kept_and_fused_refused_where_it_does_not_fit) {
    expect_chosen(MLP_KERNELS_UNFUSED, true, SHARED_SM90, 64, 32, MLP_KERNELS_UNFUSED);
    expect_chosen(MLP_KERNELS_GRAPH, true, SHARED_SM90, 64, 32, MLP_KERNELS_GRAPH);
    expect_chosen(MLP_KERNELS_GRAPH, true, SHARED_SM90, 4096, 32, MLP_KERNELS_GRAPH);
    expect_chosen(MLP_KERNELS_FUSED, true, SHARED_SM90, 128, 32, MLP_KERNELS_FUSED);
    expect_refused(MLP_KERNELS_FUSED, true, SHARED_SM90, 512, 32,
                   (const char*[]){"--kernels fused", "hidden size 512", "batch size 32", "227 KiB",
                                   "--kernels graph", NULL});
    char text[128];
    mlp_kernels_describe(MLP_KERNELS_GRAPH, MLP_KERNELS_GRAPH, true, text, sizeof text);
    cr_assert_str_eq(text, "graph");
}

Test(mlp_kernels, the_fused_kernels_shared_memory_holds_every_parameter_and_grows_with_the_batch) {
    int hidden[] = {1, 64, 128};
    for (int i = 0; i < 3; i++) {
        int H = hidden[i];
        size_t params = (size_t)mlp_num_params(H) * sizeof(float);
        cr_assert_geq(fused_shared_bytes(H, 0), params, "H=%d: %zu bytes for %zu of parameters", H,
                      fused_shared_bytes(H, 0), params);
        // each row: five (H) activations and six scalars
        cr_assert_eq(fused_shared_bytes(H, 33) - fused_shared_bytes(H, 32),
                     (5 * (size_t)H + 6) * sizeof(float), "H=%d", H);
    }
}

// ----------------------------------------------------------------------------
// the batch functions on the CPU

#define MODEL_HIDDEN 16
#define MODEL_BATCH 8
#define MODEL_STEPS 5

// Trains a fresh model MODEL_STEPS steps, whole batches (mlp_train_step) or call by call;
// params (num_params) and *loss get the result.
static void train_a_few_steps(bool whole, OptimizerKind kind, float* params, float* loss) {
    Dataset data;
    Mlp m;
    cr_assert_eq(dataset_create(&data, 200, 3), 0);
    cr_assert_eq(mlp_create(&m, &kernels_cpu, MODEL_HIDDEN, MODEL_BATCH), 0);
    cr_assert_eq(mlp_use_kernels(&m, MLP_KERNELS_UNFUSED), 0);
    cr_assert_eq(mlp_init_params(&m, 3), 0);
    int indices[MODEL_STEPS * MODEL_BATCH];
    for (int i = 0; i < MODEL_STEPS * MODEL_BATCH; i++)
        indices[i] = (i * 7) % data.n_train;
    Optimizer opt = {.kind = kind, .learning_rate = 0.01f, .momentum = 0.9f};
    for (int step = 0; step < MODEL_STEPS; step++) {
        int first = step * MODEL_BATCH;
        MlpBatch b = {data.x, data.y, indices, first, MODEL_BATCH, 0.5f};
        if (whole) {
            cr_assert_eq(mlp_train_step(&m, &opt, &b), 0);
            continue;
        }
        cr_assert_eq(mlp_load_batch(&m, data.x, data.y, indices + first, MODEL_BATCH), 0);
        cr_assert_eq(mlp_forward(&m, MODEL_BATCH), 0);
        cr_assert_eq(mlp_loss(&m, 0.5f, MODEL_BATCH), 0);
        cr_assert_eq(mlp_backward(&m, MODEL_BATCH), 0);
        cr_assert_eq(mlp_update(&m, &opt), 0);
    }
    cr_assert_eq(opt.step, MODEL_STEPS);
    cr_assert_eq(mlp_take_loss(&m, loss), 0);
    cr_assert_eq(mlp_get_params(&m, params), 0);
    mlp_free(&m);
    dataset_free(&data);
}

Test(mlp_batches, a_whole_step_on_the_cpu_is_the_step_by_step_calls_bit_for_bit) {
    OptimizerKind kinds[] = {OPTIMIZER_ADAM, OPTIMIZER_SGD};
    int n = mlp_num_params(MODEL_HIDDEN);
    float* whole = malloc((size_t)n * sizeof(float));
    float* calls = malloc((size_t)n * sizeof(float));
    cr_assert(whole != NULL && calls != NULL);
    for (int k = 0; k < 2; k++) {
        float loss_whole, loss_calls;
        train_a_few_steps(true, kinds[k], whole, &loss_whole);
        train_a_few_steps(false, kinds[k], calls, &loss_calls);
        cr_assert(loss_whole > 0.0f, "no loss was added up");
        cr_assert_eq(memcmp(&loss_whole, &loss_calls, sizeof(float)), 0, "loss %.9g != %.9g",
                     loss_whole, loss_calls);
        for (int i = 0; i < n; i++)
            cr_assert_eq(memcmp(&whole[i], &calls[i], sizeof(float)), 0,
                         "optimizer %d: parameter %d: %.9g (whole) != %.9g (call by call)", k, i,
                         whole[i], calls[i]);
    }
    free(whole);
    free(calls);
}

Test(mlp_batches, graph_and_fused_need_the_model_on_a_gpu) {
    Mlp m;
    cr_assert_eq(mlp_create(&m, &kernels_cpu, MODEL_HIDDEN, MODEL_BATCH), 0);
    cr_assert_eq(mlp_use_kernels(&m, MLP_KERNELS_GRAPH), -1);
    cr_assert_eq(mlp_use_kernels(&m, MLP_KERNELS_FUSED), -1);
    cr_assert_null(m.fast);
    cr_assert_eq(mlp_use_kernels(&m, MLP_KERNELS_UNFUSED), 0);
    mlp_free(&m);
}
