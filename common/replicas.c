/*
 * replicas.c - hashing parameters and sharing the hashes (see replicas.h).
 */
#include "replicas.h"

#include <stdlib.h>

#include "check.h"

uint64_t replicas_hash(const void* bytes, size_t len) {
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
        check_message("replica check: could not share the parameter hashes");
    return err ? -1 : 0;
}
