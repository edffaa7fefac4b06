/*
 * replicas.h - proof that every rank ends with the same model.
 *
 * Data parallelism keeps one model per rank and relies on every rank applying
 * the same averaged gradient. At the end each rank hashes the bytes of its
 * parameters and every rank learns every hash, so a rank that drifted (a
 * missed all-reduce, a non-deterministic kernel) is named, not guessed at.
 *
 * APIs: replicas_hash, replicas_gather_hashes.
 */
#ifndef REPLICAS_H
#define REPLICAS_H

#include <stddef.h>
#include <stdint.h>

#include "collective.h"

#ifdef __cplusplus
extern "C" {
#endif

// FNV-1a, 64 bits, over len bytes.
uint64_t replicas_hash(const void* bytes, size_t len);

// hashes (world_size) = every rank's hash, on every rank. Returns 0 or -1.
int replicas_gather_hashes(Communicator* comm, const Kernels* k, int rank, int world_size,
                           uint64_t mine, uint64_t* hashes);

#ifdef __cplusplus
}
#endif

#endif
