/*
 * replicas.h - proof that every rank ends with the same model.
 *
 * Data parallelism keeps one model per rank and relies on every rank applying
 * the same averaged gradient. At the end each rank hashes the bytes of its
 * parameters and every rank learns every hash, so a rank that drifted (a
 * missed all-reduce, a non-deterministic kernel) is named, not guessed at.
 *
 * APIs: replicas_check.
 */
#ifndef REPLICAS_H
#define REPLICAS_H

#include <stddef.h>
#include <stdint.h>

#include "collective.h"

#ifdef __cplusplus
extern "C" {
#endif

// Every rank hashes its params (count floats in the memory of k); all must match
// rank 0's. Rank 0 prints "Replicas agree: yes (N ranks, hash 0x...)", or names each
// rank that differs. Returns 0 if they agree, -1 otherwise (on every rank).
int replicas_check(Communicator* comm, const Kernels* k, const float* params, size_t count,
                   int rank, int world_size);

#ifdef __cplusplus
}
#endif

#endif
