/*
 * replicas.c - hashing parameters and sharing the hashes (see replicas.h).
 */
#include "replicas.h"

#include <stdio.h>
#include <stdlib.h>

#include "check.h"

// FNV-1a, 64 bits, over len bytes.
static uint64_t replicas_hash(const void* bytes, size_t len) {
    const unsigned char* p = bytes;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

// A 64-bit hash as four 16-bit pieces: integers below 2^24 are exact in a float,
// and a sum with zeros leaves them unchanged, so an all-reduce can carry them.
#define PIECES 4

int replicas_gather_hashes(Communicator* comm, const Kernels* k, int rank, int world_size,
                           uint64_t mine, uint64_t* hashes) {
    size_t count = (size_t)world_size * PIECES;
    float* host = calloc(count, sizeof(float));
    float* device = k->alloc(count * sizeof(float));
    int err = host == NULL || device == NULL;
    if (!err) {
        // Step 1) each rank writes its pieces into its own slots; the rest stay 0.
        for (int p = 0; p < PIECES; p++)
            host[rank * PIECES + p] = (float)((mine >> (16 * p)) & 0xffff);
        // Step 2) the sum over ranks fills every slot on every rank.
        err = k->upload(device, host, count * sizeof(float)) ||
              comm_allreduce_sum(comm, device, count) ||
              k->download(host, device, count * sizeof(float));
    }
    for (int r = 0; !err && r < world_size; r++) {
        hashes[r] = 0;
        for (int p = 0; p < PIECES; p++)
            hashes[r] |= (uint64_t)host[r * PIECES + p] << (16 * p);
    }
    if (device != NULL)
        k->release(device);
    free(host);
    if (err)
        rank_log("replica check: could not share the parameter hashes");
    return err ? -1 : 0;
}

int replicas_check(Communicator* comm, const Kernels* k, const float* params, size_t count,
                   int rank, int world_size) {
    float* host = malloc_nonzero(count * sizeof(float));
    uint64_t* hashes = malloc((size_t)world_size * sizeof(uint64_t));
    int err = host == NULL || hashes == NULL || k->download(host, params, count * sizeof(float));
    if (!err)
        err = replicas_gather_hashes(comm, k, rank, world_size,
                                     replicas_hash(host, count * sizeof(float)), hashes);
    int agree = !err;
    for (int r = 1; !err && r < world_size; r++)
        if (hashes[r] != hashes[0]) {
            agree = 0;
            if (rank == 0)
                printf("Replicas agree: NO: rank %d has hash 0x%016llx, rank 0 has 0x%016llx\n", r,
                       (unsigned long long)hashes[r], (unsigned long long)hashes[0]);
        }
    if (agree && rank == 0)
        printf("Replicas agree: yes (%d ranks, hash 0x%016llx)\n", world_size,
               (unsigned long long)hashes[0]);
    free(host);
    free(hashes);
    return agree ? 0 : -1;
}
