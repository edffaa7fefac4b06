/*
 * allreduce_sweep.h - the measuring half of the all-reduce benchmarks.
 *
 * One table, whatever does the all-reduce: build/allreduce_bench hands the ring, NCCL
 * or MPI_Allreduce (under mpirun) to sweep_run as an engine, which
 * checks each size on integer data outside the timed loop and times the mean of many
 * calls, as nccl-tests does.
 *
 * APIs: SweepEngine, sweep_parse_bytes, sweep_run.
 */
#ifndef ALLREDUCE_SWEEP_H
#define ALLREDUCE_SWEEP_H

#include <stddef.h>

#include "kernels.h"

typedef struct {
    const char* name; // "ring", "nccl", "mpi"
    int rank;
    int world_size;
    const Kernels* k; // the memory the buffers live in
    void* ctx;        // what the two functions need
    int (*allreduce_sum)(void* ctx, float* buf, size_t count);
    int (*barrier)(void* ctx);
} SweepEngine;

// Reads "4096", "64K", "4M" or "1G" into a byte count in [4, 1 GiB]; -1 with why filled.
int sweep_parse_bytes(const char* flag, const char* value, long* out, char* why, size_t why_len);

// Every size from min_bytes to max_bytes, doubling; rank 0 prints the table. 0 or -1.
int sweep_run(const SweepEngine* e, long min_bytes, long max_bytes);

#endif
