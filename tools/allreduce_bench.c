/*
 * allreduce_bench.c - all-reduce time and bandwidth per message size, as nccl-tests prints them.
 *
 *   build/allreduce_bench --backend ring --ranks 2 --min-bytes 8 --max-bytes 4M
 *   build/allreduce_bench --backend ring --transport socket   (the ring over socketpairs)
 *
 * Forks one process per rank (on GPUs with NCCL: one per GPU) and hands the
 * communicator to sweep_run (allreduce_sweep.h), which checks and times every size.
 * The ring's bytes travel through shared memory (comm_ring_shm) or over the
 * socketpairs; auto picks shared memory, since every rank runs on this machine.
 * Under mpirun, --backend mpi prints the same table for MPI_Allreduce:
 *   mpirun -np 2 build/allreduce_bench --backend mpi
 * --bind pins rank i to the i-th CPU this process may run on, as Open MPI binds its ranks
 * (compare them bound alike: `mpirun --bind-to core`, its default for 2 ranks).
 * --show runs one all-reduce of the ring instead and prints every rank's buffer after
 * each step (tools/ring_show.h), --slow MS pausing between them, for a class to watch:
 *   build/allreduce_bench --ranks 3 --count 6 --show --slow 1000
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "collective.h"
#include "config.h"
#include "device.h"
#include "timer.h"
#include "workers.h"
#ifdef HAVE_MPI
#include "mpi_world.h"
#endif

#include "allreduce_sweep.h"
#include "ring_show.h"

// ----------------------------------------------------------------------------
// flags

typedef struct {
    const char* backend;   // ring or nccl
    const char* transport; // the ring's: auto, shm or socket
    int ranks;
    long min_bytes, max_bytes;
    int timeout_s;
    bool show;   // --show: one all-reduce, step by step, instead of the sweep
    int count;   // --show's floats per rank; 0: not given
    int slow_ms; // --show's pause after each step; -1: not given
    bool bind;   // --bind: every rank on a CPU of its own
    int ring_fds[WORKERS_MAX][2];
    ShmRegion* ring_shm; // the ring's channels (shm transport), NULL otherwise
    RingShow* ring_show; // --show's shared memory, NULL otherwise
} Bench;

static int parse_bytes(const char* flag, const char* value, void* out, char* why, size_t why_len) {
    return sweep_parse_bytes(flag, value, out, why, why_len);
}

// --show's flags: the ring on a few ranks; --count and --slow only with it. 0, or -1 with why.
static int check_show(Bench* b, Backend engine, char* why, size_t why_len) {
    if (!b->show && (b->count != 0 || b->slow_ms != -1)) {
        snprintf(why, why_len, "%s needs --show", b->count != 0 ? "--count" : "--slow");
        return -1;
    }
    if (b->show && (engine != BACKEND_RING || b->ranks < 2 || b->ranks > RING_SHOW_MAX_RANKS)) {
        snprintf(why, why_len, "--show needs --backend ring and --ranks in [2, %d], got %s and %d",
                 RING_SHOW_MAX_RANKS, b->backend, b->ranks);
        return -1;
    }
    b->count = b->count != 0 ? b->count : 6;
    b->slow_ms = b->slow_ms != -1 ? b->slow_ms : 0;
    return 0;
}

// What no single flag can tell: sizes in order, NCCL where it can run, a transport only
// for the ring (auto is shared memory, as every rank is forked here). 0, or -1 with why.
static int check_bench(Bench* b, char* why, size_t why_len) {
    Backend engine = strcmp(b->backend, "nccl") == 0  ? BACKEND_NCCL
                     : strcmp(b->backend, "mpi") == 0 ? BACKEND_HOST
                                                      : BACKEND_RING;
    bool shm;
    RETURN_IF_FAILED(check_show(b, engine, why, why_len));
    if (b->min_bytes > b->max_bytes) {
        snprintf(why, why_len, "--min-bytes (%ld) must not exceed --max-bytes (%ld)", b->min_bytes,
                 b->max_bytes);
        return -1;
    }
    if (b->bind && engine == BACKEND_HOST) {
        snprintf(why, why_len, "%s", WORKERS_BIND_UNDER_MPIRUN);
        return -1;
    }
    if (b->bind && workers_check_bind(b->ranks, engine == BACKEND_NCCL, why, why_len) != 0)
        return -1;
    if (comm_choose_transport(b->transport, engine, &shm, why, why_len) != 0 ||
        (engine == BACKEND_NCCL && comm_choose_backend("nccl", device_gpu_count_forked(), b->ranks,
                                                       &engine, why, why_len) != 0))
        return -1;
    b->transport = shm ? "shm" : "socket";
    return 0;
}

// Fills b from argv. Exits with status 0 after --help and EXIT_USAGE after a bad flag.
static void parse_args(Bench* b, int argc, char** argv) {
    *b = (Bench){.backend = "ring",
                 .transport = "auto",
                 .ranks = 2,
                 .min_bytes = 8,
                 .max_bytes = 4L << 20,
                 .timeout_s = 60,
                 .slow_ms = -1};
    // clang-format off
    const Flag flags[] = {
        {.name = "--backend", .kind = FLAG_CHOICE, .choices = "ring|nccl|mpi",
         .destination = &b->backend, .value_name = "NAME",
         .help = "ring, nccl or mpi (default ring; mpi: MPI_Allreduce, under mpirun -np N, which "
                 "sets the ranks)"},
        {.name = "--transport", .kind = FLAG_CHOICE, .choices = "auto|shm|socket",
         .destination = &b->transport, .value_name = "NAME",
         .help = "how the ring's bytes travel: shared memory or socketpairs (default auto: shm)"},
        {.name = "--ranks", .kind = FLAG_INT, .min = 1, .max = WORKERS_MAX,
         .destination = &b->ranks, .value_name = "N",
         .help = "processes, forked here (default 2)"},
        {.name = "--min-bytes", .kind = FLAG_CUSTOM, .parse = parse_bytes,
         .destination = &b->min_bytes, .value_name = "B",
         .help = "the first message size: 8, 64K, 4M, 1G (default 8)"},
        {.name = "--max-bytes", .kind = FLAG_CUSTOM, .parse = parse_bytes,
         .destination = &b->max_bytes, .value_name = "B",
         .help = "the last message size; sizes double from the first (default 4M)"},
        {.name = "--timeout", .kind = FLAG_INT, .min = 1, .max = CONFIG_MAX_TIMEOUT_S,
         .destination = &b->timeout_s, .value_name = "SECONDS",
         .help = "deadline of every collective (default 60)"},
        {.name = "--bind", .kind = FLAG_SWITCH, .destination = &b->bind,
         .help = "pin each rank to a CPU of its own, as Open MPI does (the ring's ranks only; "
                 "default: the scheduler places them)"},
        {.name = "--show", .kind = FLAG_SWITCH, .destination = &b->show,
         .help = "one all-reduce of the ring, printing every rank's buffer after each step"},
        {.name = "--count", .kind = FLAG_INT, .min = 1, .max = RING_SHOW_MAX_COUNT,
         .destination = &b->count, .value_name = "N",
         .help = "--show's floats per rank (default 6)"},
        {.name = "--slow", .kind = FLAG_INT, .min = 0, .max = 60000,
         .destination = &b->slow_ms, .value_name = "MS",
         .help = "--show: every rank pauses MS milliseconds after each step (default 0)"},
    };
    // clang-format on
    int status;
    if (!config_parse_or_explain(
            "allreduce_bench",
            "All-reduce time and bandwidth per message size, as nccl-tests prints them.", flags,
            sizeof flags / sizeof *flags, argc, argv, &status))
        exit(status);
    char why[ERROR_TEXT_BYTES];
    if (check_bench(b, why, sizeof why) != 0)
        exit(usage_error(why));
}

// ----------------------------------------------------------------------------
// a rank

static int allreduce_sum(void* comm, float* buf, size_t count) {
    return comm_allreduce_sum(comm, buf, count, COMM_ONCE("benchmark"));
}

static int barrier(void* comm) {
    return comm_barrier(comm);
}

static int rank_main(int rank, void* arg) {
    Bench* b = arg;
    int send_fd, recv_fd;
    comm_ring_keep_own(b->ring_fds, b->ranks, rank, &send_fd, &recv_fd);
    bool nccl = strcmp(b->backend, "nccl") == 0;
    Device dev;
    char why[ERROR_TEXT_BYTES];
    if (device_open(&dev, nccl ? "cuda" : "cpu", rank, why, sizeof why) != 0) {
        rank_log("%s", why);
        return 1;
    }
    CommSettings s = {
        .rank = rank, .world_size = b->ranks, .timeout_s = b->timeout_s, .k = dev.kernels};
    Communicator* comm = NULL;
    NcclIdRoute route = {.transport = NCCL_ID_BY_RING, .send_fd = send_fd, .recv_fd = recv_fd};
    int err = nccl                  ? comm_init_nccl(&comm, s, &route)
              : b->ring_shm != NULL ? comm_init_ring_shm(&comm, s, b->ring_shm, send_fd, recv_fd)
                                    : comm_init_ring(&comm, s, send_fd, recv_fd);
    const char* name = nccl ? "nccl" : b->ring_shm != NULL ? "ring/shm" : "ring/socket";
    SweepEngine engine = {name, rank, b->ranks, dev.kernels, comm, allreduce_sum, barrier};
    if (err || (b->ring_show != NULL ? ring_show_run(b->ring_show, comm, rank)
                                     : sweep_run(&engine, b->min_bytes, b->max_bytes)) != 0)
        return 1;
    comm_destroy(comm);
    return 0;
}

// Under mpirun every process is a rank already: MPI_Allreduce, the same table.
static int run_mpi(const Bench* b) {
#ifdef HAVE_MPI
    int rank, world_size, local_rank;
    if (!mpi_launched())
        return usage_error("--backend mpi: start it with mpirun -np N allreduce_bench");
    if (mpi_world_init(&rank, &world_size, &local_rank) != 0)
        return EXIT_FAILURE;
    HostCollectives mpi = mpi_collectives();
    SweepEngine engine = {"mpi",      rank, world_size, &kernels_cpu, NULL, mpi.allreduce_sum,
                          mpi.barrier};
    int status = sweep_run(&engine, b->min_bytes, b->max_bytes) == 0 ? 0 : EXIT_FAILURE;
    mpi_world_finalize();
    return status;
#else
    (void)b;
    return usage_error("--backend mpi: this build has no MPI (mpicc was not found)");
#endif
}

int main(int argc, char** argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    Bench b;
    parse_args(&b, argc, argv);
    if (strcmp(b.backend, "mpi") == 0)
        return run_mpi(&b);
    Workers workers;
    // The ring's sockets and channels are made before the fork, so that every rank inherits them.
    if (comm_ring_socketpairs(b.ring_fds, b.ranks) != 0 ||
        (strcmp(b.transport, "shm") == 0 && (b.ring_shm = comm_ring_shm(b.ranks, 0)) == NULL) ||
        (b.show &&
         (b.ring_show = ring_show_create(b.ranks, b.count, b.slow_ms, b.timeout_s)) == NULL) ||
        workers_start(&workers, b.ranks, 0, b.bind, rank_main, &b) != 0)
        return EXIT_FAILURE;
    for (int i = 0; i < b.ranks; i++) // the parent only supervises
        close(b.ring_fds[i][0]), close(b.ring_fds[i][1]);
    shm_region_unmap(b.ring_shm);
    int status = workers_wait(&workers, NULL, NULL);
    ring_show_free(b.ring_show);
    return status;
}
