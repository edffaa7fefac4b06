/*
 * data.c - synthetic data and the distributed sampler (see data.h).
 */
#include "data.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "rng.h"

int dataset_create(Dataset* data, int n_total, uint64_t seed) {
    data->x = malloc((size_t)n_total * sizeof(float));
    data->y = malloc((size_t)n_total * sizeof(float));
    if (data->x == NULL || data->y == NULL) {
        rank_log("dataset_create: out of memory for %d samples", n_total);
        dataset_free(data);
        return -1;
    }
    // Like PyTorch's int(0.8 * len(dataset)).
    data->n_train = (int)(DATA_TRAIN_FRACTION * n_total);
    data->n_eval = n_total - data->n_train;
    for (int i = 0; i < n_total; i++) {
        double x = -M_PI + 2.0 * M_PI * rng_uniform(seed, RNG_STREAM_DATA_X, (uint64_t)i);
        double noise = DATA_NOISE_STDDEV * rng_normal(seed, RNG_STREAM_DATA_NOISE, (uint64_t)i);
        data->x[i] = (float)x;
        data->y[i] = (float)(sin(x) + noise);
    }
    return 0;
}

void dataset_free(Dataset* data) {
    free(data->x);
    free(data->y);
    data->x = data->y = NULL;
}

int sampler_create(Sampler* s, int n, int world_size, int rank, uint64_t seed) {
    s->n = n;
    s->world_size = world_size;
    s->rank = rank;
    s->seed = seed;
    s->num_samples = (n + world_size - 1) / world_size;
    s->permutation = malloc((size_t)n * sizeof(int));
    s->indices = malloc((size_t)s->num_samples * sizeof(int));
    if (s->permutation == NULL || s->indices == NULL) {
        rank_log("sampler_create: out of memory for %d indices", n);
        sampler_free(s);
        return -1;
    }
    return 0;
}

void sampler_set_epoch(Sampler* s, int epoch) {
    // Step 1) shuffle 0..n-1 (Fisher-Yates), driven by (seed, epoch).
    for (int i = 0; i < s->n; i++)
        s->permutation[i] = i;
    for (int i = s->n - 1; i > 0; i--) {
        uint64_t counter = ((uint64_t)epoch << 32) | (uint64_t)i;
        int j = (int)(rng_u64(s->seed, RNG_STREAM_SHUFFLE, counter) % (uint64_t)(i + 1));
        int tmp = s->permutation[i];
        s->permutation[i] = s->permutation[j];
        s->permutation[j] = tmp;
    }
    // Step 2) position p of the padded list is permutation[p mod n], so the
    // padding repeats the first indices; rank r takes positions r, r + N, ...
    for (int k = 0; k < s->num_samples; k++) {
        int position = s->rank + k * s->world_size;
        s->indices[k] = s->permutation[position % s->n];
    }
}

void sampler_free(Sampler* s) {
    free(s->permutation);
    free(s->indices);
    s->permutation = s->indices = NULL;
}
