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

int replicas_check(Communicator* comm, const Kernels* k, const float* params, size_t count,
                   int rank, int world_size) {
    float* host = malloc_nonzero(count * sizeof(float));
    uint64_t* hashes = malloc((size_t)world_size * sizeof(uint64_t));
    int err = host == NULL || hashes == NULL || k->download(host, params, count * sizeof(float));
    if (!err)
        err = comm_allgather_u64(comm, "replica hashes", replicas_hash(host, count * sizeof(float)),
                                 hashes);
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
