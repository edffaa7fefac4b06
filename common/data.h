/*
 * data.h - the synthetic regression task and the sampler that deals it out.
 *
 * The task is the original app's: y = sin(x) + noise, noise ~ N(0, 0.1^2),
 * x uniform in [-pi, pi]. The first 80% of the samples train, the rest
 * evaluate. Sample i depends only on (seed, i), so every rank builds the same
 * data set without communicating.
 *
 * The sampler behaves like PyTorch's DistributedSampler: each epoch it shuffles
 * the training indices with (seed, epoch), pads them to a multiple of the world
 * size by repeating the first ones, and gives rank r the positions
 * r, r + N, r + 2N, ... With N = 1 it is a plain shuffle, which is why N ranks
 * with batch B see exactly the batches that one rank sees with batch N*B.
 *
 * APIs: dataset_create, dataset_free, sampler_create, sampler_set_epoch, sampler_free.
 */
#ifndef DATA_H
#define DATA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DATA_NOISE_STDDEV 0.1
#define DATA_TRAIN_FRACTION 0.8

typedef struct {
    float* x;    // (n_total) inputs; training samples first
    float* y;    // (n_total) targets
    int n_train; // samples [0, n_train) train
    int n_eval;  // samples [n_train, n_train + n_eval) evaluate
} Dataset;

typedef struct {
    int n;            // training samples to deal out
    int world_size;   // N: how many ranks share them
    int rank;         // which share is ours
    uint64_t seed;    // with the epoch, decides the shuffle
    int* permutation; // (n) scratch for the shuffle
    int* indices;     // (num_samples) this rank's indices for the current epoch
    int num_samples;  // ceil(n / N): the same on every rank
} Sampler;

// Builds n_total samples. Returns 0, or -1 if memory runs out.
int dataset_create(Dataset* data, int n_total, uint64_t seed);
void dataset_free(Dataset* data);

int sampler_create(Sampler* s, int n, int world_size, int rank, uint64_t seed);
// Fills s->indices with this rank's shard of epoch's shuffle.
void sampler_set_epoch(Sampler* s, int epoch);
void sampler_free(Sampler* s);

#ifdef __cplusplus
}
#endif

#endif
