/*
 * hello_gpu.c - lesson 01: train a small MLP on one device, a GPU if there is one.
 *
 * The "hello world" of the course: 1-D regression (y = sin(x) + noise) with
 * Linear(1,64) -> ReLU -> Linear(64,64) -> LayerNorm(64) -> ReLU -> Linear(64,1).
 * One process, one device. Everything the model computes goes through a
 * Kernels table (common/kernels.h): plain C on the CPU, CUDA kernels on a GPU,
 * so this file reads the same for both.
 *
 * New in this lesson: device detection (common/device.h), device memory
 * (alloc / upload / download), the training loop (load a batch, forward, loss,
 * backward, update: mlp_train_step), evaluation, timing, how a GPU runs a batch
 * (--kernels: a launch per kernel, a CUDA graph, or one fused kernel; common/fast_step.h),
 * --out files (common/report.h), and
 * checkpoints: --checkpoint-dir saves the training every few epochs, --resume
 * goes on from there (common/checkpoint.h); and the instruments: --trace FILE
 * records a timeline of the run's spans, --phases prints where a step's time goes
 * (common/trace.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "checkpoint.h"
#include "config.h"
#include "data.h"
#include "device.h"
#include "mlp.h"
#include "report.h"
#include "timer.h"
#include "trace.h"

// ----------------------------------------------------------------------------
// flags

// Fills c from argv. Exits with status 0 after --help and EXIT_USAGE after a bad flag.
static void parse_args(TrainConfig* c, int argc, char** argv) {
    config_defaults(c);
    const Flag flags[] = {CONFIG_TRAINING_FLAGS(c)};
    int status;
    if (!config_parse_or_explain(
            "hello_gpu", "Trains a 1 -> H -> H -> 1 MLP on y = sin(x) + noise on one device.",
            flags, sizeof flags / sizeof *flags, argc, argv, &status))
        exit(status);
    char why[ERROR_TEXT_BYTES];
    if (config_check(c, 1, why, sizeof why) != 0)
        exit(usage_error(why));
}

// ----------------------------------------------------------------------------
// the data, moved to the device once

// The same code serves lesson 02, where every rank scores its own share of the eval
// samples; with one rank, the share is all of them.
// >>> shared "device data": the same in every lesson that has it (tests/test_lessons.c)
typedef struct {
    float* x;           // (n_train + n_eval) every sample's input, on the device
    float* y;           // (n_train + n_eval) every sample's target
    int* train_indices; // (num_samples) this rank's shard of the epoch's order, uploaded each epoch
    int* eval_indices;  // (n_eval) this rank's eval samples: n_train + rank, + rank + N, ...
    int n_eval;         // how many eval samples this rank scores (no padding: none twice)
    int n_eval_total;   // eval samples over all ranks
} DeviceData;

static int upload_data(DeviceData* d, const Kernels* k, const Dataset* data, const Sampler* s) {
    int n_total = data->n_train + data->n_eval;
    d->n_eval_total = data->n_eval;
    d->n_eval = (data->n_eval - s->rank + s->world_size - 1) / s->world_size;
    int* eval_order = malloc_nonzero((size_t)d->n_eval * sizeof(int));
    d->x = k->alloc((size_t)n_total * sizeof(float));
    d->y = k->alloc((size_t)n_total * sizeof(float));
    d->train_indices = k->alloc((size_t)s->num_samples * sizeof(int));
    d->eval_indices = k->alloc((size_t)d->n_eval * sizeof(int));
    if (eval_order == NULL || !d->x || !d->y || !d->train_indices || !d->eval_indices) {
        free(eval_order);
        return -1;
    }
    for (int i = 0; i < d->n_eval; i++)
        eval_order[i] = data->n_train + s->rank + i * s->world_size;
    int err = k->upload(d->x, data->x, (size_t)n_total * sizeof(float)) ||
              k->upload(d->y, data->y, (size_t)n_total * sizeof(float)) ||
              k->upload(d->eval_indices, eval_order, (size_t)d->n_eval * sizeof(int));
    free(eval_order);
    return err ? -1 : 0;
}
// <<< shared "device data"

// >>> shared "release_data": the same in every lesson that has it (tests/test_lessons.c)
static void release_data(DeviceData* d, const Kernels* k) {
    void* buffers[] = {d->x, d->y, d->train_indices, d->eval_indices};
    for (size_t i = 0; i < sizeof buffers / sizeof *buffers; i++)
        if (buffers[i] != NULL)
            k->release(buffers[i]);
}
// <<< shared "release_data"

// ----------------------------------------------------------------------------
// training and evaluation

// One pass over the training set; *train_loss is the mean of the batch losses.
static int train_epoch(Mlp* m, Optimizer* opt, Sampler* s, const DeviceData* d, int epoch,
                       int batch_size, float* train_loss) {
    sampler_set_epoch(s, epoch);
    RETURN_IF_FAILED(m->k->upload(d->train_indices, s->indices, s->num_samples * sizeof(int)));
    int steps = (s->num_samples + batch_size - 1) / batch_size;
    for (int step = 0; step < steps; step++) {
        int first = step * batch_size;
        int B = s->num_samples - first < batch_size ? s->num_samples - first : batch_size;
        // the batch's mean squared error, divided by steps: the loss sum becomes the mean
        MlpBatch batch = {d->x, d->y, d->train_indices, first, B, 1.0f / ((float)B * steps)};
        // load the batch, forward, loss, backward, update (mlp.c), as --kernels says
        RETURN_IF_FAILED(mlp_train_step(m, opt, &batch));
    }
    return mlp_take_loss(m, train_loss);
}

// The mean squared error over every eval sample, in chunks of the model's batch.
static int evaluate(Mlp* m, const DeviceData* d, float* eval_loss) {
    for (int first = 0; first < d->n_eval; first += m->max_batch) {
        int B = d->n_eval - first < m->max_batch ? d->n_eval - first : m->max_batch;
        MlpBatch batch = {d->x, d->y, d->eval_indices, first, B, 1.0f / d->n_eval_total};
        RETURN_IF_FAILED(mlp_batch_loss(m, &batch)); // load, forward, loss
    }
    return mlp_take_loss(m, eval_loss);
}

// Trains from the start, or from the epoch after resume_from's (unless it is NULL); each
// epoch's losses go to report as soon as they are known.
static int train(Mlp* m, const TrainConfig* c, const DeviceData* d, Sampler* s,
                 const Checkpoint* resume_from, EpochStats* stats, Report* report) {
    Optimizer opt = {.kind = c->optimizer, .learning_rate = c->learning_rate, .momentum = 0.9f};
    int first_epoch = resume_from ? checkpoint_restore(resume_from, c, 1, m, &opt, stats, true) : 0;
    if (first_epoch < 0 || report_open(report, c, 1, m, stats, first_epoch) != 0)
        return -1;
    double start = timer_seconds();
    for (int epoch = first_epoch; epoch < c->epochs; epoch++) {
        double epoch_start = timer_seconds();
        trace_begin_call(TRACE_EPOCH, "epoch", 0, epoch, -1); // ends with the loop's body
        EpochStats* e = &stats[epoch];
        RETURN_IF_FAILED(train_epoch(m, &opt, s, d, epoch, c->batch_size, &e->train_loss));
        trace_begin(TRACE_EVAL);
        RETURN_IF_FAILED(trace_end(evaluate(m, d, &e->eval_loss)));
        e->seconds = timer_seconds() - epoch_start;
        printf("Epoch [%d/%d] - Train Loss: %.6f, Eval Loss: %.6f\n", epoch + 1, c->epochs,
               e->train_loss, e->eval_loss);
        RETURN_IF_FAILED(report_add(report, epoch + 1, e));
        // A loss that is no longer a number ends the run here, before a checkpoint of it.
        RETURN_IF_FAILED(report_check_finite(e, epoch + 1, true));
        RETURN_IF_FAILED(checkpoint_save_due(c, 1, m, &opt, stats, epoch + 1));
        trace_end(0);
    }
    double total = timer_seconds() - start;
    printf("Training completed in %.3f seconds\n", total);
    if (c->epochs > first_epoch)
        printf("Average time per epoch: %.6f seconds\n", total / (c->epochs - first_epoch));
    return c->phases ? trace_report_phases(NULL, 1, total, true) : 0;
}

// ----------------------------------------------------------------------------
// output

static void print_device(const Device* dev, const char* requested) {
    char description[512];
    device_describe(dev, description, sizeof description);
    if (dev->kind == DEVICE_CPU && strcmp(requested, "auto") == 0)
        printf("No GPU found, using device: %s\n", description);
    else
        printf("Using device: %s\n", description);
}

// ----------------------------------------------------------------------------

int main(int argc, char** argv) {
    setvbuf(stdout, NULL, _IOLBF, 0); // whole lines, even into a pipe
    TrainConfig c;
    parse_args(&c, argc, argv);

    Device dev;
    Checkpoint checkpoint;
    MlpKernels kernels;
    char why[ERROR_TEXT_BYTES], kernels_text[128];
    if (device_open(&dev, c.device, 0, why, sizeof why) != 0 ||
        config_choose_kernels(&c, dev.kind == DEVICE_CUDA, &kernels, kernels_text,
                              sizeof kernels_text, why, sizeof why) != 0 ||
        (c.out_dir != NULL && report_prepare_dir(c.out_dir, why, sizeof why) != 0) ||
        (c.trace_path != NULL && trace_probe(c.trace_path, 0, 0, why, sizeof why) != 0))
        return usage_error(why);
    // The run holds its checkpoint directory until it exits: one run per directory.
    if (c.checkpoint_dir != NULL && checkpoint_lock(c.checkpoint_dir, why, sizeof why) < 0)
        return usage_error(why);
    int resuming = checkpoint_find(&c, &checkpoint, why, sizeof why);
    if (resuming < 0)
        return usage_error(why);
    print_device(&dev, c.device);
    config_print_banner(&c);
    printf("  Kernels: %s\n", kernels_text);

    Dataset data;
    Sampler sampler;
    Mlp model;
    DeviceData d = {0};
    EpochStats* stats = calloc((size_t)c.epochs, sizeof *stats);
    bool tracing = c.trace_path != NULL || c.phases;
    if (stats == NULL ||
        (tracing && trace_start(c.trace_path, TRACE_ALONE, 0, 0, dev.kind == DEVICE_CUDA)) ||
        dataset_create(&data, c.data_size, c.seed) != 0 ||
        sampler_create(&sampler, data.n_train, 1, 0, c.seed) != 0 ||
        mlp_create(&model, dev.kernels, c.hidden_size, c.batch_size) != 0 ||
        mlp_use_kernels(&model, kernels) != 0 || mlp_init_params(&model, c.seed) != 0 ||
        upload_data(&d, dev.kernels, &data, &sampler) != 0)
        return EXIT_FAILURE;
    mlp_print_summary(&model);

    Report report = {0};
    int trained = train(&model, &c, &d, &sampler, resuming ? &checkpoint : NULL, stats, &report);
    int status = report_close(&report, &data, trained == 0) == 0 && trained == 0 ? EXIT_SUCCESS
                                                                                 : EXIT_FAILURE;
    // Even after a failure: what the run did up to it.
    if (c.trace_path != NULL && trace_merge(c.trace_path, 0, 0) != 0)
        status = EXIT_FAILURE;
    trace_stop();
    checkpoint_free(&checkpoint);
    release_data(&d, dev.kernels);
    mlp_free(&model);
    sampler_free(&sampler);
    dataset_free(&data);
    free(stats);
    return status;
}
