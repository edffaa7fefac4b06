/*
 * multi_gpu.c - lesson 02: data-parallel training on one node, one process per GPU.
 *
 * Lesson 01's model and training loop, run by N worker processes at once (as
 * `torchrun --nproc_per_node=N` runs PyTorch's DistributedDataParallel). Each
 * rank trains on its own shard of every epoch; after each backward pass one
 * all-reduce averages the gradients, so every rank takes the same step and the
 * N models stay identical - which the run proves at the end.
 *
 * New since lesson 01: the parent forks one worker per GPU and supervises them
 * (common/workers.h); the communicator and its two engines, NCCL and a ring
 * all-reduce over sockets (common/collective.h); data sharding (the sampler's
 * world size); rank-0 logging; the replica check (common/replicas.h); restarts:
 * with --max-restarts N, a failed worker ends the attempt, and the parent forks
 * every worker again, resuming from the last checkpoint (common/checkpoint.h).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "checkpoint.h"
#include "collective.h"
#include "config.h"
#include "data.h"
#include "device.h"
#include "mlp.h"
#include "replicas.h"
#include "report.h"
#include "timer.h"
#include "trace.h"
#include "workers.h"

// ----------------------------------------------------------------------------
// flags

typedef struct {
    // >>> shared "options": the same in every lesson that has it (tests/test_lessons.c)
    TrainConfig train;
    int nproc;             // --gpus / --nproc-per-node: workers on this node (0: decide)
    const char* backend;   // --backend auto|nccl|ring
    const char* transport; // --transport auto|shm|socket: how the ring's bytes travel
    int timeout_s;         // --timeout: deadline of every collective
    bool debug;            // --debug: print every collective step
    int max_restarts;      // --max-restarts: new attempts after a worker fails
    bool bind;             // --bind: every worker on a CPU of its own
    // <<< shared "options"
} Options;

// Fills o from argv. Exits with status 0 after --help and EXIT_USAGE after a bad flag.
static void parse_args(Options* o, int argc, char** argv) {
    *o = (Options){.backend = "auto", .transport = "auto", .timeout_s = 60};
    config_defaults(&o->train);
    // clang-format off
    const Flag flags[] = {
        CONFIG_TRAINING_FLAGS(&o->train),
        // >>> shared "flags": the same in every lesson that has it (tests/test_lessons.c)
        {.name = "--gpus", .alias = "--nproc-per-node", .kind = FLAG_INT, .min = 1,
         .max = WORKERS_MAX, .destination = &o->nproc, .value_name = "N",
         .help = "worker processes, one per GPU (default: the number of GPUs, or 2 on the CPU)"},
        {.name = "--backend", .kind = FLAG_CHOICE, .choices = "auto|nccl|ring",
         .destination = &o->backend, .value_name = "NAME",
         .help = "auto, nccl or ring (default auto: NCCL when every worker has its own GPU, the "
                 "ring all-reduce otherwise)"},
        {.name = "--transport", .kind = FLAG_CHOICE, .choices = "auto|shm|socket",
         .destination = &o->transport, .value_name = "NAME",
         .help = "how the ring's bytes travel: shared memory or socketpairs (default auto: "
                 "shm)"},
        {.name = "--timeout", .kind = FLAG_INT, .min = 1, .max = CONFIG_MAX_TIMEOUT_S,
         .destination = &o->timeout_s, .value_name = "SECONDS",
         .help = "deadline of every collective (default 60)"},
        {.name = "--max-restarts", .kind = FLAG_INT, .min = 0, .max = CONFIG_MAX_RESTARTS,
         .destination = &o->max_restarts, .value_name = "N",
         .help = "when a worker fails, start every worker again, from the last checkpoint if "
                 "there is one, up to N times (default 0)"},
        {.name = "--bind", .kind = FLAG_SWITCH, .destination = &o->bind,
         .help = "pin worker i to the i-th CPU this process may run on, as mpirun does (workers "
                 "on the CPU only; default: the scheduler places them)"},
        {.name = "--debug", .kind = FLAG_SWITCH, .destination = &o->debug,
         .help = "print every collective step on stderr"},
        // <<< shared "flags"
    };
    // clang-format on
    int status;
    if (!config_parse_or_explain("multi_gpu",
                                 "Trains lesson 01's MLP with N processes on one node, averaging "
                                 "gradients each step.",
                                 flags, sizeof flags / sizeof *flags, argc, argv, &status))
        exit(status);
}

// ----------------------------------------------------------------------------
// the plan: how many workers, on which devices, with which engine

// >>> shared "plan": the same in every lesson that has it (tests/test_lessons.c)
typedef struct {
    Options opt;
    int world_size;
    int gpus; // GPUs visible to this node
    Backend backend;
    bool shm;                     // the ring's bytes go through shared memory
    int ring_fds[WORKERS_MAX][2]; // socketpair i carries rank i's sends to rank i + 1
    ShmRegion* ring_shm;          // the ring's channels, made anew for every attempt
    int checkpoint_lock;          // the run's hold on --checkpoint-dir, or -1
} Plan;

// Decides world size and backend before anything is forked. Exits with EXIT_USAGE
// when the flags ask for what this machine or build cannot do.
static void make_plan(Plan* p, const Options* o) {
    char why[ERROR_TEXT_BYTES];
    Checkpoint checkpoint; // the workers read it; a bad one fails here, before any fork
    p->opt = *o;
    p->gpus = device_gpus_for_workers(o->train.device, why, sizeof why);
    p->world_size = o->nproc > 0 ? o->nproc : (p->gpus > 0 ? p->gpus : 2);
    // The parent holds the checkpoint directory for the whole job, restarts included.
    const char* dir = o->train.checkpoint_dir;
    p->checkpoint_lock = -1;
    if (p->gpus < 0 ||
        comm_choose_backend(o->backend, p->gpus, p->world_size, &p->backend, why, sizeof why) !=
            0 ||
        comm_choose_transport(o->transport, p->backend, &p->shm, why, sizeof why) != 0 ||
        (o->bind && workers_check_bind(p->world_size, p->gpus > 0, why, sizeof why) != 0) ||
        mlp_kernels_check(o->train.kernels, p->gpus > 0, why, sizeof why) != 0 ||
        config_check(&o->train, p->world_size, why, sizeof why) != 0 ||
        (o->train.out_dir != NULL && report_prepare_dir(o->train.out_dir, why, sizeof why) != 0) ||
        (o->train.trace_path != NULL &&
         trace_probe(o->train.trace_path, 0, p->world_size, why, sizeof why) != 0) ||
        (dir != NULL && (p->checkpoint_lock = checkpoint_lock(dir, why, sizeof why)) < 0) ||
        checkpoint_find(&o->train, &checkpoint, why, sizeof why) < 0)
        exit(usage_error(why));
    checkpoint_free(&checkpoint);
}
// <<< shared "plan"

// ----------------------------------------------------------------------------
// the data, moved to the device once

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

// >>> shared "train_epoch": the same in every lesson that has it (tests/test_lessons.c)
// One pass over this rank's shard; *train_loss is the mean of the batch losses of all ranks.
static int train_epoch(Mlp* m, Optimizer* opt, Sampler* s, const DeviceData* d, int epoch,
                       int batch_size, Communicator* comm, double* comm_seconds,
                       float* train_loss) {
    sampler_set_epoch(s, epoch);
    RETURN_IF_FAILED(m->k->upload(d->train_indices, s->indices, s->num_samples * sizeof(int)));
    int steps = (s->num_samples + batch_size - 1) / batch_size;
    for (int step = 0; step < steps; step++) {
        int first = step * batch_size;
        int B = s->num_samples - first < batch_size ? s->num_samples - first : batch_size;
        // the batch's mean squared error, divided by steps: the loss sum becomes the mean
        MlpBatch batch = {d->x, d->y, d->train_indices, first, B, 1.0f / ((float)B * steps)};
        // load the batch, forward, loss, backward (mlp.c), as --kernels says
        RETURN_IF_FAILED(mlp_batch_gradients(m, &batch));
        // Data parallelism in one line: every rank's gradients become their mean over
        // the ranks, so every rank takes the same step. (The wait for the backward
        // pass is kept out of the all-reduce's time.)
        RETURN_IF_FAILED(m->k->synchronize());
        double start = timer_seconds();
        RETURN_IF_FAILED(comm_allreduce_mean(comm, m->grads, (size_t)m->num_params,
                                             COMM_CALL("gradients", epoch, step)));
        *comm_seconds += timer_seconds() - start;
        RETURN_IF_FAILED(mlp_update(m, opt));
    }
    RETURN_IF_FAILED(comm_allreduce_mean(comm, m->loss, 1, COMM_CALL("train loss", epoch, -1)));
    return mlp_take_loss(m, train_loss);
}
// <<< shared "train_epoch"

// >>> shared "evaluate": the same in every lesson that has it (tests/test_lessons.c)
// The mean squared error over every eval sample: each rank scores its share, the sum
// over ranks of (its squared errors / all eval samples) is the global mean.
static int evaluate(Mlp* m, const DeviceData* d, Communicator* comm, int epoch, float* eval_loss) {
    for (int first = 0; first < d->n_eval; first += m->max_batch) {
        int B = d->n_eval - first < m->max_batch ? d->n_eval - first : m->max_batch;
        MlpBatch batch = {d->x, d->y, d->eval_indices, first, B, 1.0f / d->n_eval_total};
        RETURN_IF_FAILED(mlp_batch_loss(m, &batch)); // load, forward, loss
    }
    RETURN_IF_FAILED(comm_allreduce_sum(comm, m->loss, 1, COMM_CALL("eval loss", epoch, -1)));
    return mlp_take_loss(m, eval_loss);
}
// <<< shared "evaluate"

// >>> shared "comm time": the same in every lesson that has it (tests/test_lessons.c)
// What the gradients' all-reduce cost: comm_seconds of the total, over epochs.
static void print_comm_time(const Communicator* comm, double comm_seconds, int epochs,
                            double total) {
    (void)comm; // lesson 04 asks it what the buckets cost
    printf("Gradient all-reduce: %.6f seconds per epoch (%.1f%% of the time)\n",
           comm_seconds / epochs, 100.0 * comm_seconds / total);
}
// <<< shared "comm time"

// >>> shared "train": the same in every lesson that has it (tests/test_lessons.c)
// Trains from the start, or from the epoch after resume_from's (unless it is NULL);
// rank 0 (verbose) prints the progress, adds each epoch to report and writes the
// checkpoints.
static int train(Mlp* m, const TrainConfig* c, const DeviceData* d, Sampler* s, Communicator* comm,
                 int world_size, bool verbose, const Checkpoint* resume_from, EpochStats* stats,
                 Report* report) {
    Optimizer opt = {.kind = c->optimizer, .learning_rate = c->learning_rate, .momentum = 0.9f};
    int first_epoch =
        resume_from ? checkpoint_restore(resume_from, c, world_size, m, &opt, stats, verbose) : 0;
    if (first_epoch < 0 ||
        report_open(report, verbose ? c : NULL, world_size, m, stats, first_epoch))
        return -1;
    double comm_seconds = 0.0;
    double start = timer_seconds();
    for (int epoch = first_epoch; epoch < c->epochs; epoch++) {
        double epoch_start = timer_seconds();
        trace_begin_call(TRACE_EPOCH, "epoch", 0, epoch, -1); // ends with the loop's body
        EpochStats* e = &stats[epoch];
        RETURN_IF_FAILED(
            train_epoch(m, &opt, s, d, epoch, c->batch_size, comm, &comm_seconds, &e->train_loss));
        trace_begin(TRACE_EVAL);
        RETURN_IF_FAILED(trace_end(evaluate(m, d, comm, epoch, &e->eval_loss)));
        e->seconds = timer_seconds() - epoch_start;
        if (verbose)
            printf("Epoch [%d/%d] - Train Loss: %.6f, Eval Loss: %.6f\n", epoch + 1, c->epochs,
                   e->train_loss, e->eval_loss);
        RETURN_IF_FAILED(report_add(report, epoch + 1, e));
        // Every rank has the same losses: all stop at a loss that is no longer a number.
        RETURN_IF_FAILED(report_check_finite(e, epoch + 1, verbose));
        if (verbose)
            RETURN_IF_FAILED(checkpoint_save_due(c, world_size, m, &opt, stats, epoch + 1));
        trace_end(0);
    }
    double total = timer_seconds() - start;
    int epochs_run = c->epochs - first_epoch;
    if (verbose)
        printf("Training completed in %.3f seconds\n", total);
    if (verbose && epochs_run > 0) {
        printf("Average time per epoch: %.6f seconds\n", total / epochs_run);
        print_comm_time(comm, comm_seconds, epochs_run, total);
    }
    return c->phases ? trace_report_phases(comm, world_size, total, verbose) : 0;
}
// <<< shared "train"

// ----------------------------------------------------------------------------
// output

// >>> shared "process initialized": the same in every lesson that has it (tests/test_lessons.c)
static void print_process_initialized(const Device* dev, int rank, int local_rank, int world_size) {
    char description[512], host[256] = "unknown";
    device_describe(dev, description, sizeof description);
    gethostname(host, sizeof host - 1);
    // The pid, so that a worker can be stopped or killed by hand (the lessons' exercises).
    printf("[Rank %d] Process initialized on %s, pid %d, local_rank: %d, world_size: %d, device: "
           "%s\n",
           rank, host, (int)getpid(), local_rank, world_size, description);
}
// <<< shared "process initialized"

// ----------------------------------------------------------------------------
// a rank: lesson 01's program, with a communicator

// >>> shared "kernels": the same in every lesson that has it (tests/test_lessons.c)
// The model's batches run as --kernels asks, on this rank's device (mlp_kernels_choose);
// verbose: rank 0 says what a GPU runs. A model too large for --kernels fused fails for good.
static int use_kernels(Mlp* m, const TrainConfig* c, const Device* dev, bool verbose) {
    MlpKernels kernels;
    char why[ERROR_TEXT_BYTES], text[128];
    bool on_gpu = dev->kind == DEVICE_CUDA;
    if (config_choose_kernels(c, on_gpu, &kernels, text, sizeof text, why, sizeof why) != 0) {
        rank_log_for_good("error: %s", why);
        return -1;
    }
    if (verbose && on_gpu)
        printf("Kernels: %s\n", text);
    return mlp_use_kernels(m, kernels);
}
// <<< shared "kernels"

// >>> shared "train_rank": the same in every lesson that has it (tests/test_lessons.c)
// Trains one rank's replica to the end and checks it against the others. Returns
// the rank's exit status.
static int train_rank(const TrainConfig* c, const Device* dev, Communicator* comm, int rank,
                      int world_size) {
    if (comm_barrier(comm) != 0) // every rank is up before rank 0 goes on
        return 1;
    Dataset data;
    Sampler sampler;
    Mlp model;
    DeviceData d = {0};
    EpochStats* stats = calloc((size_t)c->epochs, sizeof *stats);
    if (stats == NULL || dataset_create(&data, c->data_size, c->seed) != 0 ||
        sampler_create(&sampler, data.n_train, world_size, rank, c->seed) != 0 ||
        mlp_create(&model, dev->kernels, c->hidden_size, c->batch_size) != 0 ||
        use_kernels(&model, c, dev, rank == 0) != 0 || mlp_init_params(&model, c->seed) != 0 ||
        upload_data(&d, dev->kernels, &data, &sampler) != 0)
        return 1;
    // Every rank made the same weights from the seed; DDP broadcasts rank 0's anyway,
    // so that replicas start equal even when initialisation is not deterministic.
    if (comm_broadcast(comm, model.params, (size_t)model.num_params, 0,
                       COMM_ONCE("initial parameters")) != 0)
        return 1;
    if (rank == 0)
        mlp_print_summary(&model);
    // Every rank reads the checkpoint that it resumes from, if any: all must read the same.
    Checkpoint checkpoint;
    char why[ERROR_TEXT_BYTES];
    int resuming = checkpoint_find(c, &checkpoint, why, sizeof why);
    if (resuming < 0)
        rank_log("%s", why);
    if (resuming < 0 ||
        checkpoint_ranks_agree(comm, rank, world_size, resuming ? &checkpoint : NULL) != 0)
        return 1;

    Report report = {0};
    int status = train(&model, c, &d, &sampler, comm, world_size, rank == 0,
                       resuming ? &checkpoint : NULL, stats, &report) == 0 &&
                         replicas_check(comm, model.k, model.params, (size_t)model.num_params, rank,
                                        world_size) == 0
                     ? 0
                     : 1;
    if (report_close(&report, &data, status == 0) != 0)
        status = 1;
    checkpoint_free(&checkpoint);
    release_data(&d, dev->kernels);
    mlp_free(&model);
    sampler_free(&sampler);
    dataset_free(&data);
    free(stats);
    return status;
}
// <<< shared "train_rank"

// ----------------------------------------------------------------------------
// a worker: one rank's whole life

// >>> shared "communicator": the same in every lesson that has it (tests/test_lessons.c)
static int make_communicator(Communicator** comm, const Plan* p, int rank, const Device* dev,
                             int send_fd, int recv_fd) {
    CommSettings s = {.rank = rank,
                      .world_size = p->world_size,
                      .timeout_s = p->opt.timeout_s,
                      .debug = p->opt.debug,
                      .k = dev->kernels};
    if (p->backend == BACKEND_RING && p->ring_shm != NULL)
        return comm_init_ring_shm(comm, s, p->ring_shm, send_fd, recv_fd);
    if (p->backend == BACKEND_RING)
        return comm_init_ring(comm, s, send_fd, recv_fd);
    // NCCL's id travels once around the ring's sockets, which then have served.
    NcclIdRoute route = {.transport = NCCL_ID_BY_RING, .send_fd = send_fd, .recv_fd = recv_fd};
    return comm_init_nccl(comm, s, &route);
}
// <<< shared "communicator"

static int worker_main(int rank, void* arg) {
    Plan* p = arg;
    const TrainConfig* c = &p->opt.train;
    int send_fd, recv_fd;
    comm_ring_keep_own(p->ring_fds, p->world_size, rank, &send_fd, &recv_fd);
    Device dev;
    char why[ERROR_TEXT_BYTES];
    if (device_open(&dev, c->device, p->gpus > 0 ? rank % p->gpus : 0, why, sizeof why) != 0) {
        rank_log("%s", why);
        return 1;
    }
    bool tracing = c->trace_path != NULL || c->phases;
    if (tracing && trace_start(c->trace_path, TRACE_WORKER, 0, rank, dev.kind == DEVICE_CUDA) != 0)
        return 1;
    Communicator* comm = NULL;
    if (make_communicator(&comm, p, rank, &dev, send_fd, recv_fd) != 0)
        return 1;
    print_process_initialized(&dev, rank, rank, p->world_size);
    int status = train_rank(c, &dev, comm, rank, p->world_size);
    if (status == 0)
        comm_destroy(comm);
    else // the others may be stuck in a collective with us: do not wait for them
        comm_abort(comm);
    // Even after a failure: what this rank did up to it, for the parent to merge.
    return trace_write_part() == 0 ? status : 1;
}

// >>> shared "run_workers": the same in every lesson that has it (tests/test_lessons.c)
// One attempt at the job: every worker forked, supervised to the end. Returns what
// workers_wait does; w->failure names the first failure.
static int run_workers(Workers* w, Plan* p) {
    // The ring's sockets (and its channels in shared memory) are made before the fork, so
    // that every worker inherits them.
    if (comm_ring_socketpairs(p->ring_fds, p->world_size) != 0 ||
        (p->shm && (p->ring_shm = comm_ring_shm(p->world_size, 0)) == NULL) ||
        workers_start(w, p->world_size, 0, p->opt.bind, worker_main, p) != 0)
        return EXIT_FAILURE;
    for (int i = 0; i < p->world_size; i++) // the parent only supervises
        close(p->ring_fds[i][0]), close(p->ring_fds[i][1]);
    shm_region_unmap(p->ring_shm);
    p->ring_shm = NULL;
    return workers_wait(w, NULL, NULL);
}
// <<< shared "run_workers"

// >>> shared "restarts": the same in every lesson that has it (tests/test_lessons.c)
// The job, and with --max-restarts N up to N more attempts after a worker failed, each
// from the last checkpoint. Returns the job's exit status.
static int run_with_restarts(Plan* p) {
    Workers workers;
    int max = p->opt.max_restarts;
    for (int restart = 1;; restart++) {
        int status = run_workers(&workers, p);
        // Only a failed worker is worth another attempt (128 + signal: interrupted).
        if (status == 0 || status > 128 || workers.failure[0] == '\0' || max == 0)
            return status;
        if (workers.failure_is_for_good) {
            fprintf(stderr, "no restart: it could not cure what ended the job: %s\n",
                    workers.failure);
            return status;
        }
        if (restart > max) {
            fprintf(stderr, "no restarts left (%d used): the job ends after: %s\n", max,
                    workers.failure);
            return status;
        }
        fprintf(stderr, "restart %d/%d after: %s\n", restart, max, workers.failure);
        p->opt.train.resume_if_present = true; // from the last checkpoint, if one was written
    }
}
// <<< shared "restarts"

// ----------------------------------------------------------------------------

int main(int argc, char** argv) {
    setvbuf(stdout, NULL, _IOLBF, 0); // whole lines, even into a pipe
    Options o;
    parse_args(&o, argc, argv);
    Plan p;
    make_plan(&p, &o);
    config_print_banner(&o.train);
    printf("  World size: %d\n", p.world_size);
    printf("  Backend: %s\n", p.backend == BACKEND_NCCL ? "nccl" : "ring");

    int status = run_with_restarts(&p);
    // One file of every worker's part (a failed run's too: what its workers wrote).
    if (o.train.trace_path != NULL && trace_merge(o.train.trace_path, 0, p.world_size) != 0)
        status = status != 0 ? status : EXIT_FAILURE;
    return status;
}
