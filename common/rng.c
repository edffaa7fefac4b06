/*
 * rng.c - splitmix64, used as a hash of (seed, stream, counter).
 */
#include "rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t rng_u64(uint64_t seed, uint64_t stream, uint64_t counter) {
    // The first round turns (seed, stream) into a key whose bits are all mixed,
    // so that neighbouring seeds or streams do not give overlapping sequences.
    uint64_t key = splitmix64(seed ^ splitmix64(stream));
    return splitmix64(key ^ splitmix64(counter));
}

double rng_uniform(uint64_t seed, uint64_t stream, uint64_t counter) {
    return (double)(rng_u64(seed, stream, counter) >> 11) * 0x1.0p-53;
}

double rng_normal(uint64_t seed, uint64_t stream, uint64_t counter) {
    // 1 - u is in (0, 1], so the logarithm is finite.
    double u1 = 1.0 - rng_uniform(seed, stream, 2 * counter);
    double u2 = rng_uniform(seed, stream, 2 * counter + 1);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}
