/*
 * allreduce_bench_mpi.c - build/allreduce_bench's table for MPI_Allreduce, to read side by side.
 *
 *   mpirun -np 2 build/allreduce_bench_mpi --min-bytes 8 --max-bytes 4M
 *
 * Built when mpicc is found. Open MPI picks its transport itself; add
 * `--mca btl self,vader` (shared memory) or `--mca btl self,tcp` to mpirun to choose.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "kernels.h"

#include "allreduce_sweep.h"

static int allreduce_sum(void* ctx, float* buf, size_t count) {
    (void)ctx;
    return MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) ==
                   MPI_SUCCESS
               ? 0
               : -1;
}

static int barrier(void* ctx) {
    (void)ctx;
    return MPI_Barrier(MPI_COMM_WORLD) == MPI_SUCCESS ? 0 : -1;
}

// Reads --min-bytes and --max-bytes; every rank parses the same argv.
static int parse_args(int argc, char** argv, long* min_bytes, long* max_bytes) {
    *min_bytes = 8;
    *max_bytes = 4L << 20;
    for (int i = 1; i < argc; i++) {
        char flag[64];
        const char* value;
        int err = config_split_flag(argc, argv, &i, flag, sizeof flag, &value);
        if (!err && strcmp(flag, "--min-bytes") == 0)
            err = sweep_parse_bytes(flag, value, min_bytes);
        else if (!err && strcmp(flag, "--max-bytes") == 0)
            err = sweep_parse_bytes(flag, value, max_bytes);
        else if (!err) {
            fprintf(stderr, "error: unknown flag %s (the flags are --min-bytes, --max-bytes)\n",
                    flag);
            err = -1;
        }
        if (err)
            return -1;
    }
    if (*min_bytes > *max_bytes) {
        fprintf(stderr, "error: --min-bytes (%ld) must not exceed --max-bytes (%ld)\n", *min_bytes,
                *max_bytes);
        return -1;
    }
    return 0;
}

int main(int argc, char** argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    MPI_Init(&argc, &argv);
    int rank, world_size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    long min_bytes, max_bytes;
    int status = EXIT_USAGE;
    if (parse_args(argc, argv, &min_bytes, &max_bytes) == 0) {
        SweepEngine engine = {"mpi", rank, world_size, &kernels_cpu, NULL, allreduce_sum, barrier};
        status = sweep_run(&engine, min_bytes, max_bytes) == 0 ? 0 : 1;
    }
    MPI_Finalize();
    return status;
}
