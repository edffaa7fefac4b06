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

// ----------------------------------------------------------------------------
// flags

typedef struct {
    const char* backend;   // ring or nccl
    const char* transport; // the ring's: auto, shm or socket
    int ranks;
    long min_bytes, max_bytes;
    int timeout_s;
    int ring_fds[WORKERS_MAX][2];
    ShmRegion* ring_shm; // the ring's channels (shm transport), NULL otherwise
} Bench;

// --transport is the ring's; auto is shared memory, as every rank is forked here.
static void settle_transport(Bench* b) {
    if (strcmp(b->backend, "ring") != 0 && strcmp(b->transport, "auto") != 0) {
        fprintf(stderr, "error: --transport %s is the ring's; --backend %s moves its own bytes\n",
                b->transport, b->backend);
        exit(EXIT_USAGE);
    }
    if (strcmp(b->transport, "auto") == 0)
        b->transport = strcmp(b->backend, "ring") == 0 ? "shm" : "socket";
}

static void parse_args(Bench* b, int argc, char** argv) {
    *b = (Bench){.backend = "ring",
                 .transport = "auto",
                 .ranks = 2,
                 .min_bytes = 8,
                 .max_bytes = 4L << 20,
                 .timeout_s = 60};
    for (int i = 1; i < argc; i++) {
        char flag[64];
        const char* value;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: allreduce_bench [--backend ring|nccl|mpi] [--transport auto|shm|socket] "
                   "[--ranks N] [--min-bytes B] [--max-bytes B] [--timeout SECONDS]\n"
                   "  --backend mpi: MPI_Allreduce, under mpirun -np N (which sets the ranks)\n"
                   "  --transport: how the ring's bytes travel: shared memory or socketpairs "
                   "(auto: shm)\n");
            exit(0);
        }
        int err = config_split_flag(argc, argv, &i, flag, sizeof flag, &value);
        if (!err && strcmp(flag, "--backend") == 0)
            err = config_parse_choice(flag, value, "ring|nccl|mpi", &b->backend);
        else if (!err && strcmp(flag, "--transport") == 0)
            err = config_parse_choice(flag, value, "auto|shm|socket", &b->transport);
        else if (!err && strcmp(flag, "--ranks") == 0)
            err = config_parse_int(flag, value, 1, WORKERS_MAX, &b->ranks);
        else if (!err && strcmp(flag, "--min-bytes") == 0)
            err = sweep_parse_bytes(flag, value, &b->min_bytes);
        else if (!err && strcmp(flag, "--max-bytes") == 0)
            err = sweep_parse_bytes(flag, value, &b->max_bytes);
        else if (!err && strcmp(flag, "--timeout") == 0)
            err = config_parse_int(flag, value, 1, 86400, &b->timeout_s);
        else if (!err) {
            fprintf(stderr, "error: unknown flag %s (see --help)\n", flag);
            err = -1;
        }
        if (err)
            exit(EXIT_USAGE);
    }
    char why[512];
    Backend engine;
    if (strcmp(b->backend, "nccl") == 0 &&
        comm_choose_backend("nccl", device_gpu_count_forked(), b->ranks, &engine, why,
                            sizeof why) != 0) {
        fprintf(stderr, "error: %s\n", why);
        exit(EXIT_USAGE);
    }
    settle_transport(b);
    if (b->min_bytes > b->max_bytes) {
        fprintf(stderr, "error: --min-bytes (%ld) must not exceed --max-bytes (%ld)\n",
                b->min_bytes, b->max_bytes);
        exit(EXIT_USAGE);
    }
}

// ----------------------------------------------------------------------------
// a rank

static int allreduce_sum(void* comm, float* buf, size_t count) {
    return comm_allreduce_sum(comm, buf, count);
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
    char why[512];
    if (device_open(&dev, nccl ? "cuda" : "cpu", rank, why, sizeof why) != 0) {
        check_message("%s", why);
        return 1;
    }
    CommSettings s = {
        .rank = rank, .world_size = b->ranks, .timeout_s = b->timeout_s, .k = dev.kernels};
    Communicator* comm = NULL;
    unsigned char id[COMM_NCCL_ID_BYTES];
    int err = nccl ? comm_share_nccl_id(id, rank, b->ranks, send_fd, recv_fd, b->timeout_s) ||
                         comm_init_nccl(&comm, s, id)
              : b->ring_shm != NULL ? comm_init_ring_shm(&comm, s, b->ring_shm, send_fd, recv_fd)
                                    : comm_init_ring(&comm, s, send_fd, recv_fd);
    const char* name = nccl ? "nccl" : b->ring_shm != NULL ? "ring/shm" : "ring/socket";
    SweepEngine engine = {name, rank, b->ranks, dev.kernels, comm, allreduce_sum, barrier};
    if (err || sweep_run(&engine, b->min_bytes, b->max_bytes) != 0)
        return 1;
    comm_destroy(comm);
    return 0;
}

// Under mpirun every process is a rank already: MPI_Allreduce, the same table.
static int run_mpi(const Bench* b) {
#ifdef HAVE_MPI
    int rank, world_size, local_rank;
    if (!mpi_launched()) {
        fprintf(stderr, "error: --backend mpi: start it with mpirun -np N %s\n", "allreduce_bench");
        return EXIT_USAGE;
    }
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
    fprintf(stderr, "error: --backend mpi: this build has no MPI (mpicc was not found)\n");
    return EXIT_USAGE;
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
        workers_start(&workers, b.ranks, 0, rank_main, &b) != 0)
        return EXIT_FAILURE;
    for (int i = 0; i < b.ranks; i++) // the parent only supervises
        close(b.ring_fds[i][0]), close(b.ring_fds[i][1]);
    shm_region_unmap(b.ring_shm);
    return workers_wait(&workers, NULL, NULL);
}
