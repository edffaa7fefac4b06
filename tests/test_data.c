/*
 * test_data.c - the random numbers, the synthetic data set, the initial
 * weights and the distributed sampler.
 *
 * Statistical checks run on fixed seeds, so they are deterministic: a
 * tolerance of 5 standard errors is not there to make a flaky test rare, but
 * so that a correct generator passes for any seed one might choose, while a
 * wrong mean, spread or range (off by far more than 5 standard errors) fails.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "kernels.h"
#include "mlp.h"
#include "rng.h"

// ----------------------------------------------------------------------------
// helpers

typedef struct {
    double mean, std, min, max;
} Stats;

static Stats stats_of(const double* a, int n) {
    Stats s = {0.0, 0.0, INFINITY, -INFINITY};
    for (int i = 0; i < n; i++) {
        s.mean += a[i];
        s.min = fmin(s.min, a[i]);
        s.max = fmax(s.max, a[i]);
    }
    s.mean /= n;
    for (int i = 0; i < n; i++)
        s.std += (a[i] - s.mean) * (a[i] - s.mean);
    s.std = sqrt(s.std / n);
    return s;
}

static double* new_doubles(int n) {
    double* a = malloc((size_t)n * sizeof(double));
    cr_assert_not_null(a, "out of memory for %d doubles", n);
    return a;
}

// Fails unless got and want hold the same n floats bit for bit, naming the first difference.
static void expect_identical(const float* got, const float* want, int n, const char* what) {
    for (int i = 0; i < n; i++)
        cr_assert(memcmp(&got[i], &want[i], sizeof(float)) == 0,
                  "%s: first difference at [%d]: %.9g vs %.9g", what, i, got[i], want[i]);
}

// How many of the n floats differ between a and b.
static int count_different(const float* a, const float* b, int n) {
    int count = 0;
    for (int i = 0; i < n; i++)
        count += a[i] != b[i];
    return count;
}

// ----------------------------------------------------------------------------
// rng

#define RNG_SAMPLES 1000000

Test(rng, uniform_is_in_the_unit_interval_with_mean_one_half) {
    double* u = new_doubles(RNG_SAMPLES);
    for (int i = 0; i < RNG_SAMPLES; i++) {
        u[i] = rng_uniform(42, RNG_STREAM_DATA_X, (uint64_t)i);
        cr_assert(u[i] >= 0.0 && u[i] < 1.0, "rng_uniform sample %d = %.17g is outside [0, 1)", i,
                  u[i]);
    }
    Stats s = stats_of(u, RNG_SAMPLES);
    // U(0,1): mean 1/2, std sqrt(1/12) = 0.2887. Standard errors over 1e6 samples:
    // 0.2887 / 1000 = 2.9e-4 for the mean, ~0.2887 * sqrt(0.2 / 1e6) ~ 1.3e-4 for the std.
    cr_assert(fabs(s.mean - 0.5) < 5 * 2.9e-4, "mean %.6f, want 0.5", s.mean);
    cr_assert(fabs(s.std - sqrt(1.0 / 12)) < 5 * 1.3e-4, "std %.6f, want 0.288675", s.std);
    // The ends are reached: the gap to either end is ~1e-6 for 1e6 samples.
    cr_assert(s.min < 1e-4 && s.max > 1 - 1e-4, "range [%.3g, %.6f]", s.min, s.max);
    free(u);
}

Test(rng, normal_has_mean_zero_and_std_one) {
    double* z = new_doubles(RNG_SAMPLES);
    for (int i = 0; i < RNG_SAMPLES; i++) {
        z[i] = rng_normal(42, RNG_STREAM_DATA_NOISE, (uint64_t)i);
        cr_assert(isfinite(z[i]), "rng_normal sample %d is %g", i, z[i]);
    }
    Stats s = stats_of(z, RNG_SAMPLES);
    // N(0,1) over 1e6 samples: standard error 1e-3 for the mean, 1/sqrt(2e6) = 7.1e-4 for the std.
    cr_assert(fabs(s.mean) < 5 * 1e-3, "mean %.6f, want 0", s.mean);
    cr_assert(fabs(s.std - 1.0) < 5 * 7.1e-4, "std %.6f, want 1", s.std);
    // Tails: P(|z| > 3) = 0.0027, so 2700 +- 52 samples; a Box-Muller slip changes this a lot.
    int beyond3 = 0;
    for (int i = 0; i < RNG_SAMPLES; i++)
        beyond3 += fabs(z[i]) > 3.0;
    cr_assert(abs(beyond3 - 2700) < 5 * 52, "%d samples beyond 3 sigma, want ~2700", beyond3);
    free(z);
}

Test(rng, is_a_pure_function_of_seed_stream_and_counter) {
    // Asked in any order, any number of times: the same bits.
    uint64_t first = rng_u64(7, RNG_STREAM_INIT, 1000);
    for (int i = 0; i < 100; i++)
        rng_u64(7, RNG_STREAM_INIT, (uint64_t)i);
    cr_assert_eq(rng_u64(7, RNG_STREAM_INIT, 1000), first);
    // Neighbouring seeds, streams and counters give unrelated numbers.
    cr_assert_neq(rng_u64(8, RNG_STREAM_INIT, 1000), first);
    cr_assert_neq(rng_u64(7, RNG_STREAM_SHUFFLE, 1000), first);
    cr_assert_neq(rng_u64(7, RNG_STREAM_INIT, 1001), first);
}

// ----------------------------------------------------------------------------
// the data set

Test(data, same_seed_gives_identical_data_and_another_seed_different_data) {
    Dataset a, b, c;
    cr_assert_eq(dataset_create(&a, 2000, 42), 0);
    cr_assert_eq(dataset_create(&b, 2000, 42), 0);
    cr_assert_eq(dataset_create(&c, 2000, 43), 0);
    expect_identical(b.x, a.x, 2000, "x of two data sets with seed 42");
    expect_identical(b.y, a.y, 2000, "y of two data sets with seed 42");
    // Seeds 42 and 43 share no sample (a coincidence has probability ~2000 * 2^-24).
    cr_assert_eq(count_different(c.x, a.x, 2000), 2000, "x barely depends on the seed");
    cr_assert_eq(count_different(c.y, a.y, 2000), 2000, "y barely depends on the seed");
    dataset_free(&a), dataset_free(&b), dataset_free(&c);
}

Test(data, a_sample_depends_only_on_the_seed_and_its_index) {
    // So every rank builds the same data, whatever the data set's size.
    Dataset small, large;
    cr_assert_eq(dataset_create(&small, 100, 42), 0);
    cr_assert_eq(dataset_create(&large, 2000, 42), 0);
    expect_identical(small.x, large.x, 100, "x of the first 100 samples");
    expect_identical(small.y, large.y, 100, "y of the first 100 samples");
    dataset_free(&small), dataset_free(&large);
}

Test(data, splits_80_percent_for_training_as_pytorch_int_does) {
    // int(0.8 * n): rounded down, and the rest evaluates.
    int sizes[] = {10, 11, 14, 15, 2000, 2001, 2004};
    int want_train[] = {8, 8, 11, 12, 1600, 1600, 1603};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        Dataset d;
        cr_assert_eq(dataset_create(&d, sizes[i], 1), 0);
        cr_assert_eq(d.n_train, want_train[i], "n = %d: %d training samples, want %d", sizes[i],
                     d.n_train, want_train[i]);
        cr_assert_eq(d.n_eval, sizes[i] - want_train[i], "n = %d: %d eval samples, want %d",
                     sizes[i], d.n_eval, sizes[i] - want_train[i]);
        dataset_free(&d);
    }
}

Test(data, follows_the_spec_sin_x_plus_noise_on_minus_pi_to_pi) {
    enum { N = 100000 };
    Dataset d;
    cr_assert_eq(dataset_create(&d, N, 42), 0);
    double *x = new_doubles(N), *noise = new_doubles(N);
    for (int i = 0; i < N; i++) {
        // x is stored as a float: (float)M_PI is 8.7e-8 above pi, so that is the bound.
        cr_assert(d.x[i] >= -(float)M_PI && d.x[i] <= (float)M_PI,
                  "x[%d] = %.9g is outside [-pi, pi]", i, d.x[i]);
        x[i] = d.x[i];
        noise[i] = (double)d.y[i] - sin((double)d.x[i]);
    }
    // x ~ U(-pi, pi): mean 0, std pi / sqrt(3) = 1.8138; standard errors over 1e5:
    // 1.8138 / 316 = 5.7e-3 for the mean, ~1.8138 * sqrt(0.2 / 1e5) = 2.6e-3 for the std.
    Stats sx = stats_of(x, N);
    cr_assert(fabs(sx.mean) < 5 * 5.7e-3, "x: mean %.5f, want 0", sx.mean);
    cr_assert(fabs(sx.std - M_PI / sqrt(3)) < 5 * 2.6e-3, "x: std %.5f, want 1.81380", sx.std);
    cr_assert(sx.min < -M_PI + 1e-3 && sx.max > M_PI - 1e-3, "x spans only [%.5f, %.5f]", sx.min,
              sx.max);
    // noise ~ N(0, 0.1^2); y and x are floats, which adds ~1e-7, far below these
    // standard errors: 0.1 / 316 = 3.2e-4 for the mean, 0.1 / sqrt(2e5) = 2.2e-4 for the std.
    Stats sn = stats_of(noise, N);
    cr_assert(fabs(sn.mean) < 5 * 3.2e-4, "y - sin(x): mean %.6f, want 0", sn.mean);
    cr_assert(fabs(sn.std - DATA_NOISE_STDDEV) < 5 * 2.2e-4, "y - sin(x): std %.6f, want 0.1",
              sn.std);
    free(x), free(noise);
    dataset_free(&d);
}

// ----------------------------------------------------------------------------
// the initial weights

static float* initial_params(int hidden, uint64_t seed, Mlp* m) {
    cr_assert_eq(mlp_create(m, &kernels_cpu, hidden, 1), 0);
    cr_assert_eq(mlp_init_params(m, seed), 0);
    float* host = malloc((size_t)m->num_params * sizeof(float));
    cr_assert_not_null(host);
    cr_assert_eq(mlp_get_params(m, host), 0);
    return host;
}

Test(mlp, same_seed_gives_identical_initial_weights_and_another_seed_different_ones) {
    Mlp a, b, c;
    float* pa = initial_params(64, 42, &a);
    float* pb = initial_params(64, 42, &b);
    float* pc = initial_params(64, 43, &c);
    cr_assert_eq(a.num_params, 4481);
    expect_identical(pb, pa, a.num_params, "initial weights with seed 42");
    // LayerNorm's 2 * 64 parameters are 1 and 0 for every seed; all the others differ.
    cr_assert_eq(count_different(pc, pa, a.num_params), a.num_params - 128,
                 "initial weights barely depend on the seed");
    free(pa), free(pb), free(pc);
    mlp_free(&a), mlp_free(&b), mlp_free(&c);
}

Test(mlp, initial_weights_follow_pytorch_defaults) {
    // nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases; nn.LayerNorm: 1, 0.
    enum { H = 64 };
    Mlp m;
    float* p = initial_params(H, 42, &m);
    struct {
        const char* name;
        float* t;
        int n;
        double bound;
    } linear[] = {
        {"w1", m.p.w1, H, 1.0},   {"b1", m.p.b1, H, 1.0},   {"w2", m.p.w2, H * H, 0.125},
        {"b2", m.p.b2, H, 0.125}, {"w3", m.p.w3, H, 0.125}, {"b3", m.p.b3, 1, 0.125},
    };
    for (size_t t = 0; t < sizeof linear / sizeof *linear; t++) {
        float* host = p + (linear[t].t - m.params);
        double max_abs = 0.0;
        for (int i = 0; i < linear[t].n; i++)
            max_abs = fmax(max_abs, fabs(host[i]));
        cr_assert(max_abs <= linear[t].bound, "%s: |%g| beyond the bound %g", linear[t].name,
                  max_abs, linear[t].bound);
        // 64 uniform draws reach beyond half the bound with probability 1 - 2^-64.
        cr_assert(linear[t].n == 1 || max_abs > linear[t].bound / 2,
                  "%s: max |value| %g, too small for U(+-%g)", linear[t].name, max_abs,
                  linear[t].bound);
    }
    for (int i = 0; i < H; i++) {
        cr_assert_eq(p[(m.p.ln_gamma - m.params) + i], 1.0f, "ln_gamma[%d] is not 1", i);
        cr_assert_eq(p[(m.p.ln_beta - m.params) + i], 0.0f, "ln_beta[%d] is not 0", i);
    }
    free(p);
    mlp_free(&m);
}

// ----------------------------------------------------------------------------
// the sampler

// The epoch's indices of rank `rank` of `world`: a fresh copy the caller frees.
static int* shard(int n, int world, int rank, uint64_t seed, int epoch, int* count) {
    Sampler s;
    cr_assert_eq(sampler_create(&s, n, world, rank, seed), 0);
    sampler_set_epoch(&s, epoch);
    *count = s.num_samples;
    int* out = malloc((size_t)s.num_samples * sizeof(int));
    cr_assert_not_null(out);
    memcpy(out, s.indices, (size_t)s.num_samples * sizeof(int));
    sampler_free(&s);
    return out;
}

// With one rank the sampler is a plain shuffle: a permutation of 0..n-1.
static int* permutation(int n, uint64_t seed, int epoch) {
    int count;
    int* perm = shard(n, 1, 0, seed, epoch, &count);
    cr_assert_eq(count, n, "one rank gets %d of %d samples", count, n);
    int* seen = calloc((size_t)n, sizeof(int));
    cr_assert_not_null(seen);
    for (int i = 0; i < n; i++) {
        cr_assert(perm[i] >= 0 && perm[i] < n, "index %d out of range [0, %d)", perm[i], n);
        cr_assert_eq(seen[perm[i]]++, 0, "n = %d: index %d appears twice", n, perm[i]);
    }
    free(seen);
    return perm;
}

Test(sampler, deals_every_index_to_the_ranks_like_distributed_sampler) {
    int sizes[] = {1, 2, 3, 5, 7, 8, 9, 10, 17, 100, 1600};
    for (int world = 1; world <= 8; world++) {
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
            int n = sizes[si], epoch = 3;
            int* perm = permutation(n, 42, epoch);
            int per_rank = (n + world - 1) / world, total = per_rank * world;
            int* count = calloc((size_t)n, sizeof(int));
            cr_assert_not_null(count);
            for (int rank = 0; rank < world; rank++) {
                int got;
                int* idx = shard(n, world, rank, 42, epoch, &got);
                cr_assert_eq(got, per_rank, "n = %d, N = %d: rank %d gets %d samples, want %d", n,
                             world, rank, got, per_rank);
                // Rank r takes positions r, r + N, ... of the permutation padded
                // by repeating it from its start (n < N repeats it several times).
                for (int j = 0; j < got; j++) {
                    int want = perm[(rank + j * world) % n];
                    cr_assert_eq(idx[j], want,
                                 "n = %d, N = %d, rank %d: sample %d is %d, want %d (position %d)",
                                 n, world, rank, j, idx[j], want, rank + j * world);
                    count[idx[j]]++;
                }
                free(idx);
            }
            // Across ranks each index appears once, plus once for every padding
            // position p in [n, total) with p mod n equal to its place in the permutation.
            for (int place = 0; place < n; place++) {
                int want = 1;
                for (int p = n; p < total; p++)
                    want += p % n == place;
                cr_assert_eq(count[perm[place]], want,
                             "n = %d, N = %d: index %d dealt %d times, want %d", n, world,
                             perm[place], count[perm[place]], want);
            }
            free(count), free(perm);
        }
    }
}

Test(sampler, same_epoch_gives_the_same_order_and_other_epochs_other_orders) {
    enum { N = 100, EPOCHS = 5 };
    int* perms[EPOCHS];
    for (int e = 0; e < EPOCHS; e++)
        perms[e] = permutation(N, 42, e);
    for (int e = 0; e < EPOCHS; e++)
        for (int f = e + 1; f < EPOCHS; f++)
            cr_assert_neq(memcmp(perms[e], perms[f], N * sizeof(int)), 0,
                          "epochs %d and %d have the same order", e, f);
    // Revisiting an epoch, after others and in a new sampler, gives its order again.
    Sampler s;
    cr_assert_eq(sampler_create(&s, N, 1, 0, 42), 0);
    sampler_set_epoch(&s, 4);
    sampler_set_epoch(&s, 2);
    cr_assert_eq(memcmp(s.indices, perms[2], N * sizeof(int)), 0, "epoch 2 changed on a revisit");
    sampler_free(&s);
    int* other_seed = permutation(N, 43, 2);
    cr_assert_neq(memcmp(other_seed, perms[2], N * sizeof(int)), 0, "the seed does not matter");
    free(other_seed);
    for (int e = 0; e < EPOCHS; e++)
        free(perms[e]);
}

Test(sampler, shuffle_puts_every_index_at_every_position_equally_often) {
    // Over 10000 epochs of n = 5, each (index, position) pair is expected
    // 10000 / 5 = 2000 times, binomial std sqrt(10000 * 0.2 * 0.8) = 40: 5 std is
    // 200. A classic slip, j drawn from [0, i) instead of [0, i] (Sattolo's
    // algorithm), never leaves an index in place and fails by 2000.
    enum { N = 5, EPOCHS = 10000 };
    int hits[N][N] = {{0}};
    Sampler s;
    cr_assert_eq(sampler_create(&s, N, 1, 0, 42), 0);
    for (int e = 0; e < EPOCHS; e++) {
        sampler_set_epoch(&s, e);
        for (int p = 0; p < N; p++)
            hits[s.indices[p]][p]++;
    }
    sampler_free(&s);
    for (int i = 0; i < N; i++)
        for (int p = 0; p < N; p++)
            cr_assert(abs(hits[i][p] - EPOCHS / N) < 200,
                      "index %d at position %d %d times in %d epochs, want ~%d", i, p, hits[i][p],
                      EPOCHS, EPOCHS / N);
}
