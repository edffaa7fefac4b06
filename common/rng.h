/*
 * rng.h - a counter-based random number generator.
 *
 * A number is a pure function of (seed, stream, counter): there is no hidden
 * state, so every rank, machine and device that asks for sample i of a stream
 * gets the same bits, in any order, without talking to anyone. The mixing
 * function is splitmix64 (Steele, Lea and Flood, 2014): one keyed round makes a key
 * of (seed, stream), a second mixes the counter into it.
 *
 * APIs: rng_u64, rng_uniform, rng_normal.
 */
#ifndef RNG_H
#define RNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Streams keep independent uses of one seed apart.
enum {
    RNG_STREAM_DATA_X = 1,
    RNG_STREAM_DATA_NOISE = 2,
    RNG_STREAM_INIT = 3,
    RNG_STREAM_SHUFFLE = 4, // counter space: epoch << 32 | position
};

uint64_t rng_u64(uint64_t seed, uint64_t stream, uint64_t counter);
// Uniform in [0, 1), 53 random bits.
double rng_uniform(uint64_t seed, uint64_t stream, uint64_t counter);
// Standard normal (Box-Muller on two uniforms drawn at 2*counter and 2*counter+1).
double rng_normal(uint64_t seed, uint64_t stream, uint64_t counter);

#ifdef __cplusplus
}
#endif

#endif
