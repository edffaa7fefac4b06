/*
 * allreduce_bench.c - all-reduce time and bandwidth per message size, as nccl-tests prints them.
 *
 *   build/allreduce_bench --backend ring --ranks 2 --min-bytes 8 --max-bytes 4M
 *
 * Forks one process per rank (on GPUs with NCCL: one per GPU), then for each
 * size from min to max (doubling) times the mean of many all-reduces of floats.
 * algbw = bytes / time; busbw = algbw * 2 (N - 1) / N, the bandwidth each link
 * must carry in a ring, which is comparable across rank counts (nccl-tests'
 * convention). Correctness is checked on integer-valued data outside the timed
 * loop: #wrong counts the elements that differ from the exact sum.
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

// ----------------------------------------------------------------------------
// flags

typedef struct {
    const char* backend; // ring or nccl
    int ranks;
    long min_bytes, max_bytes;
    int timeout_s;
    int ring_fds[WORKERS_MAX][2];
} Bench;

// Reads "4096", "64K", "4M" or "1G" into a byte count in [4, 1 GiB].
static int parse_bytes(const char* flag, const char* value, long* out) {
    char* end = NULL;
    long v = value != NULL ? strtol(value, &end, 10) : 0;
    long unit = end == NULL   ? 0
                : *end == 'K' ? 1L << 10
                : *end == 'M' ? 1L << 20
                : *end == 'G' ? 1L << 30
                              : 1;
    if (end != NULL && unit > 1)
        end++;
    if (value == NULL || end == value || *end != '\0' || v < 1 || v * unit < 4 ||
        v * unit > (1L << 30)) {
        fprintf(stderr, "error: %s must be a size in [4, 1G] bytes (e.g. 8, 64K, 4M), got '%s'\n",
                flag, value != NULL ? value : "(nothing)");
        return -1;
    }
    *out = v * unit;
    return 0;
}

static void parse_args(Bench* b, int argc, char** argv) {
    *b = (Bench){
        .backend = "ring", .ranks = 2, .min_bytes = 8, .max_bytes = 4L << 20, .timeout_s = 60};
    for (int i = 1; i < argc; i++) {
        char flag[64];
        const char* value;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: allreduce_bench [--backend ring|nccl] [--ranks N] [--min-bytes B] "
                   "[--max-bytes B] [--timeout SECONDS]\n");
            exit(0);
        }
        int err = config_split_flag(argc, argv, &i, flag, sizeof flag, &value);
        if (!err && strcmp(flag, "--backend") == 0)
            err = config_parse_choice(flag, value, "ring|nccl", &b->backend);
        else if (!err && strcmp(flag, "--ranks") == 0)
            err = config_parse_int(flag, value, 1, WORKERS_MAX, &b->ranks);
        else if (!err && strcmp(flag, "--min-bytes") == 0)
            err = parse_bytes(flag, value, &b->min_bytes);
        else if (!err && strcmp(flag, "--max-bytes") == 0)
            err = parse_bytes(flag, value, &b->max_bytes);
        else if (!err && strcmp(flag, "--timeout") == 0)
            err = config_parse_int(flag, value, 1, 86400, &b->timeout_s);
        else if (!err) {
            fprintf(stderr, "error: unknown flag %s (see --help)\n", flag);
            err = -1;
        }
        if (err)
            exit(EXIT_USAGE);
    }
    if (b->min_bytes > b->max_bytes) {
        fprintf(stderr, "error: --min-bytes (%ld) must not exceed --max-bytes (%ld)\n",
                b->min_bytes, b->max_bytes);
        exit(EXIT_USAGE);
    }
}

// ----------------------------------------------------------------------------
// one size

// Enough iterations for about 0.2 s of traffic, at least 20 and at most 2000;
// the same on every rank, since it depends only on the size.
static int iterations_for(long bytes) {
    long iters = 200000000L / (bytes + 20000);
    return iters < 20 ? 20 : iters > 2000 ? 2000 : (int)iters;
}

// Fills host (count) with rank-dependent integers whose exact sum over ranks is known.
static float value_at(int rank, size_t i) {
    return (float)((rank + 1) * (int)(i % 7));
}

static int count_wrong(Communicator* comm, const Kernels* k, float* device, float* host,
                       size_t count, int rank, int world_size) {
    for (size_t i = 0; i < count; i++)
        host[i] = value_at(rank, i);
    RETURN_IF_FAILED(k->upload(device, host, count * sizeof(float)));
    RETURN_IF_FAILED(comm_allreduce_sum(comm, device, count));
    RETURN_IF_FAILED(k->download(host, device, count * sizeof(float)));
    int wrong = 0, ranks_sum = world_size * (world_size + 1) / 2;
    for (size_t i = 0; i < count; i++)
        wrong += host[i] != (float)(ranks_sum * (int)(i % 7));
    return wrong;
}

static int bench_size(Communicator* comm, const Kernels* k, float* device, float* host, long bytes,
                      int rank, int world_size) {
    size_t count = (size_t)bytes / sizeof(float);
    int wrong = count_wrong(comm, k, device, host, count, rank, world_size);
    int iters = iterations_for(bytes);
    RETURN_IF_FAILED(wrong < 0 ? -1 : 0);
    for (int i = 0; i < 5; i++) // warm-up
        RETURN_IF_FAILED(comm_allreduce_sum(comm, device, count));
    RETURN_IF_FAILED(comm_barrier(comm));
    double start = timer_seconds();
    for (int i = 0; i < iters; i++)
        RETURN_IF_FAILED(comm_allreduce_sum(comm, device, count));
    double seconds = (timer_seconds() - start) / iters;
    double algbw = (double)bytes / seconds / 1e9;
    double busbw = algbw * 2.0 * (world_size - 1) / world_size;
    if (rank == 0)
        printf("%12ld %10zu %10.2f %12.3f %12.3f %8d\n", bytes, count, seconds * 1e6, algbw, busbw,
               wrong);
    return 0;
}

// ----------------------------------------------------------------------------
// a rank

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
    unsigned char id[NCCL_UNIQUE_ID_BYTES];
    int err = nccl ? comm_share_nccl_id(id, rank, b->ranks, send_fd, recv_fd, b->timeout_s) ||
                         comm_init_nccl(&comm, s, id)
                   : comm_init_ring(&comm, s, send_fd, recv_fd);
    size_t max_count = (size_t)b->max_bytes / sizeof(float);
    float* host = malloc(max_count * sizeof(float));
    float* device = dev.kernels->alloc(max_count * sizeof(float));
    if (err || host == NULL || device == NULL)
        return 1;
    if (rank == 0)
        printf("# all-reduce of floats (sum), backend %s, %d ranks; time: mean over iterations\n"
               "%12s %10s %10s %12s %12s %8s\n",
               b->backend, b->ranks, "size(B)", "count", "time(us)", "algbw(GB/s)", "busbw(GB/s)",
               "#wrong");
    for (long bytes = b->min_bytes; bytes <= b->max_bytes; bytes *= 2)
        if (bench_size(comm, dev.kernels, device, host, bytes, rank, b->ranks) != 0)
            return 1;
    comm_destroy(comm);
    return 0;
}

int main(int argc, char** argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    Bench b;
    parse_args(&b, argc, argv);
    Workers workers;
    if (comm_ring_socketpairs(b.ring_fds, b.ranks) != 0 ||
        workers_start(&workers, b.ranks, 0, rank_main, &b) != 0)
        return EXIT_FAILURE;
    for (int i = 0; i < b.ranks; i++)
        close(b.ring_fds[i][0]), close(b.ring_fds[i][1]);
    return workers_wait(&workers, NULL, NULL);
}
