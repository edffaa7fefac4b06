/*
 * test_kernels.c - the CPU kernels (the specification) checked from the outside.
 *
 * Backward passes against central finite differences, layer by layer and for
 * the whole model; forward passes and optimizer steps against values worked
 * out by hand from the documented formulas (PyTorch's nn.Linear, nn.LayerNorm,
 * nn.MSELoss, torch.optim.Adam, torch.optim.SGD); the tiled linear layer
 * against its reference loops (kernels_cpu_naive).
 *
 * How the gradient checks stay sharp in float32:
 *   - the scalar being differentiated, L = sum(out * r) with fixed random r,
 *     is summed in double on the host, so the sum adds no rounding of its own;
 *   - the step is h = 1e-3, and the divisor is the step the float input really
 *     took, (float)(x + h) - (float)(x - h), not 2h (which is off by up to
 *     |x| * 2^-24 / h ~ 1e-4 relative);
 *   - every gradient buffer is filled with NaN before the backward call, so a
 *     kernel that accumulates instead of overwriting fails loudly.
 * The tolerance each check uses is derived where it is used.
 *
 * Shapes: B batch rows, C input features, OC output features, N elements.
 */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "kernels.h"
#include "mlp.h"
#include "rng.h"

#define FD_STEP 1e-3
#define TEST_STREAM 1000 // an rng stream of the tests' own, apart from the program's

static const Kernels* const k = &kernels_cpu;

// ----------------------------------------------------------------------------
// helpers

// Fails unless every |got[i] - want[i]| <= tol (NaN fails), naming the worst element.
static void expect_close(const float* got, const double* want, int n, double tol,
                         const char* what) {
    int worst = 0;
    double max_diff = -1.0;
    for (int i = 0; i < n; i++) {
        double diff = fabs((double)got[i] - want[i]);
        if (isnan(diff))
            diff = INFINITY;
        if (diff > max_diff) {
            max_diff = diff;
            worst = i;
        }
    }
    cr_assert(max_diff <= tol,
              "%s: worst element [%d]: got %.9g, want %.9g; max difference %.3g > tolerance %.3g",
              what, worst, got[worst], want[worst], max_diff, tol);
}

// As expect_close, for values of very different sizes: |got - want| <= rtol * |want|.
static void expect_close_relative(const float* got, const double* want, int n, double rtol,
                                  const char* what) {
    int worst = 0;
    double max_rel = -1.0;
    for (int i = 0; i < n; i++) {
        double rel = fabs((double)got[i] - want[i]) / fabs(want[i]);
        if (isnan(rel))
            rel = INFINITY;
        if (rel > max_rel) {
            max_rel = rel;
            worst = i;
        }
    }
    cr_assert(max_rel <= rtol,
              "%s: worst element [%d]: got %.9g, want %.9g; max relative difference %.3g > %.3g",
              what, worst, got[worst], want[worst], max_rel, rtol);
}

static float* new_floats(int n) {
    float* a = calloc((size_t)n, sizeof(float));
    cr_assert_not_null(a, "out of memory for %d floats", n);
    return a;
}

static double* new_doubles(int n) {
    double* a = calloc((size_t)n, sizeof(double));
    cr_assert_not_null(a, "out of memory for %d doubles", n);
    return a;
}

// a[i] uniform in [lo, hi), reproducible from (seed, i).
static void fill_uniform(float* a, int n, double lo, double hi, uint64_t seed) {
    for (int i = 0; i < n; i++)
        a[i] = (float)(lo + (hi - lo) * rng_uniform(seed, TEST_STREAM, (uint64_t)i));
}

static void fill_nan(float* a, int n) {
    for (int i = 0; i < n; i++)
        a[i] = NAN;
}

// sum(out * r) in double: the scalar whose gradient with respect to out is r.
static double dot_double(const float* out, const float* r, int n) {
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += (double)out[i] * r[i];
    return sum;
}

// A scalar function of some float buffers, re-evaluated after each perturbation.
typedef double (*ScalarFn)(void* ctx);

// dL/dx[i] by central differences, divided by the step the float x[i] really took.
static double central_difference(ScalarFn f, void* ctx, float* x, int i) {
    float saved = x[i];
    float plus = (float)(saved + FD_STEP), minus = (float)(saved - FD_STEP);
    x[i] = plus;
    double l_plus = f(ctx);
    x[i] = minus;
    double l_minus = f(ctx);
    x[i] = saved;
    return (l_plus - l_minus) / ((double)plus - (double)minus);
}

static void finite_difference_gradient(double* grad, ScalarFn f, void* ctx, float* x, int n) {
    for (int i = 0; i < n; i++)
        grad[i] = central_difference(f, ctx, x, i);
}

// ----------------------------------------------------------------------------
// forward passes on small cases worked out by hand

Test(kernels, gather_batch_picks_the_indexed_samples) {
    float data_x[] = {10, 11, 12, 13, 14}, data_y[] = {20, 21, 22, 23, 24};
    int indices[] = {3, 0, 3, 4};
    float x[4], y[4];
    cr_assert_eq(k->gather_batch(x, y, data_x, data_y, indices, 4), 0);
    double want_x[] = {13, 10, 13, 14}, want_y[] = {23, 20, 23, 24};
    expect_close(x, want_x, 4, 0.0, "gathered x");
    expect_close(y, want_y, 4, 0.0, "gathered y");
}

Test(kernels, linear_forward_matches_a_hand_computed_2x3_case) {
    // Integers, so every product and sum is exact in float: tolerance 0.
    float inp[] = {1, 2, 3,  // row 0
                   4, 5, 6}; // row 1
    float w[] = {1, 0, -1,   // output 0
                 2, 1, 0};   // output 1
    float bias[] = {0.5f, -1};
    float out[4];
    cr_assert_eq(k->linear_forward(out, inp, w, bias, 2, 3, 2), 0);
    // out[b][o] = sum_i inp[b][i] w[o][i] + bias[o]
    double want[] = {1 - 3 + 0.5, 2 + 2 - 1, 4 - 6 + 0.5, 8 + 5 - 1};
    expect_close(out, want, 4, 0.0, "linear out");
}

Test(kernels, relu_forward_and_backward_pass_only_positive_values) {
    float inp[] = {-2, -0.0f, 0, 0.5f, 3}, dout[] = {1, 2, 3, 4, 5};
    float out[5], dinp[5];
    cr_assert_eq(k->relu_forward(out, inp, 5), 0);
    cr_assert_eq(k->relu_backward(dinp, dout, out, 5), 0);
    double want_out[] = {0, 0, 0, 0.5, 3}, want_dinp[] = {0, 0, 0, 4, 5};
    expect_close(out, want_out, 5, 0.0, "relu out");
    expect_close(dinp, want_dinp, 5, 0.0, "relu dinp");
}

Test(kernels, layernorm_forward_matches_hand_computed_rows) {
    // Row 0 = [1, 2, 3, 4]: mean 2.5, biased variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25.
    // Row 1 is constant: variance 0, so rstd = 1 / sqrt(eps) and the output is beta.
    float inp[] = {1, 2, 3, 4, 2, 2, 2, 2};
    float gamma[] = {1, 2, 0.5f, -1}, beta[] = {0, 1, 0, -0.5f};
    float out[8], mean[2], rstd[2];
    cr_assert_eq(k->layernorm_forward(out, mean, rstd, inp, gamma, beta, 2, 4), 0);
    double s0 = 1.0 / sqrt(1.25 + 1e-5), s1 = 1.0 / sqrt(1e-5);
    double want_out[] = {
        -1.5 * s0 * 1, -0.5 * s0 * 2 + 1, 0.5 * s0 * 0.5, 1.5 * s0 * -1 - 0.5, 0, 1, 0, -0.5};
    double want_mean[] = {2.5, 2}, want_rstd[] = {s0, s1};
    // Outputs are O(1): a few float roundings (2^-24 ~ 6e-8 each) stay far below 1e-6.
    expect_close(out, want_out, 8, 1e-6, "layernorm out");
    expect_close(mean, want_mean, 2, 0.0, "layernorm mean");
    // eps is the float 1e-5f, which differs from 1e-5 by ~2.5e-13: negligible at 1e-6.
    expect_close_relative(rstd, want_rstd, 2, 1e-6, "layernorm rstd");
}

Test(kernels, mse_forward_adds_the_scaled_sum_of_squares) {
    float pred[] = {1, 2, 3}, target[] = {0, 2, 5};
    float loss = 1.0f; // the kernel adds to what is there
    cr_assert_eq(k->mse_forward(&loss, pred, target, 0.5f, 3), 0);
    double want = 1.0 + 0.5 * (1 + 0 + 4); // exact in float
    expect_close(&loss, &want, 1, 0.0, "mse loss");
}

Test(kernels, mse_backward_is_the_gradient_of_the_batch_mean) {
    float pred[] = {1, 2, 3}, target[] = {0, 2, 5};
    float dpred[3];
    cr_assert_eq(k->mse_backward(dpred, pred, target, 3), 0);
    double want[] = {2.0 * 1 / 3, 0, 2.0 * -2 / 3};
    expect_close(dpred, want, 3, 1e-7, "mse dpred");
}

// ----------------------------------------------------------------------------
// the tiled linear layer against the reference loops (kernels_cpu_naive)

// Shapes around every edge of the tiles, whatever the vector width (tiles of 4 or 8 rows by 8,
// 16 or 32 columns): one row, one input, one output, rows and columns just past a tile, and
// more inputs than the forward pass packs at a time (256).
static const int ODD_B[] = {1, 3, 8, 33};
static const int ODD_C[] = {1, 2, 17, 64, 65, 300};
static const int ODD_OC[] = {1, 3, 16, 33, 64, 97};
#define COUNT(array) ((int)(sizeof(array) / sizeof(array[0])))

// Fails unless got and want (rows, cols) differ by at most tol everywhere (NaN fails), naming
// the worst element by row and column, and the largest difference.
static void expect_matrix_close(const float* got, const float* want, int rows, int cols, double tol,
                                const char* what) {
    int worst = 0;
    double max_diff = -1.0;
    for (int i = 0; i < rows * cols; i++) {
        double diff = fabs((double)got[i] - want[i]);
        if (isnan(diff))
            diff = INFINITY;
        if (diff > max_diff) {
            max_diff = diff;
            worst = i;
        }
    }
    cr_assert(max_diff <= tol,
              "%s: worst element [%d][%d]: got %.9g, want %.9g; max difference %.3g > tolerance "
              "%.3g",
              what, worst / cols, worst % cols, got[worst], want[worst], max_diff, tol);
}

// a[i] a whole number in [-4, 4], reproducible from (seed, i). Products and sums of these
// stay exact in float (below 2^24), so any order of the additions gives the same bits.
static void fill_small_integers(float* a, int n, uint64_t seed) {
    for (int i = 0; i < n; i++)
        a[i] = (float)(rng_u64(seed, TEST_STREAM, (uint64_t)i) % 9) - 4.0f;
}

// One shape of the linear layer: its inputs, and a tiled and a reference copy of each output.
typedef struct {
    int B, C, OC;
    float *inp, *w, *bias, *dout;   // (B, C), (OC, C), (OC), (B, OC)
    float *out, *dinp, *dw, *dbias; // tiled (kernels_cpu): (B, OC), (B, C), (OC, C), (OC)
    float *out_ref, *dinp_ref, *dw_ref, *dbias_ref; // the same, from kernels_cpu_naive
} LinearShape;

// Inputs from fill (integers or floats); outputs NaN, so that an element left unwritten fails.
static LinearShape linear_shape_new(int B, int C, int OC, void (*fill)(float*, int, uint64_t)) {
    LinearShape s = {.B = B, .C = C, .OC = OC};
    float** inputs[] = {&s.inp, &s.w, &s.bias, &s.dout};
    int input_sizes[] = {B * C, OC * C, OC, B * OC};
    for (int i = 0; i < COUNT(inputs); i++) {
        *inputs[i] = new_floats(input_sizes[i]);
        fill(*inputs[i], input_sizes[i], 20 + (uint64_t)i);
    }
    float** outputs[] = {&s.out,     &s.dinp,     &s.dw,     &s.dbias,
                         &s.out_ref, &s.dinp_ref, &s.dw_ref, &s.dbias_ref};
    int output_sizes[] = {B * OC, B * C, OC * C, OC};
    for (int i = 0; i < COUNT(outputs); i++) {
        *outputs[i] = new_floats(output_sizes[i % 4]);
        fill_nan(*outputs[i], output_sizes[i % 4]);
    }
    return s;
}

static void linear_shape_free(LinearShape* s) {
    float* all[] = {s->inp, s->w,     s->bias,    s->dout,     s->out,    s->dinp,
                    s->dw,  s->dbias, s->out_ref, s->dinp_ref, s->dw_ref, s->dbias_ref};
    for (int i = 0; i < COUNT(all); i++)
        free(all[i]);
}

// Both tables' forward and backward passes on s, compared within tol.
static void compare_linear_layers(LinearShape* s, double tol) {
    int B = s->B, C = s->C, OC = s->OC;
    cr_assert_eq(kernels_cpu.linear_forward(s->out, s->inp, s->w, s->bias, B, C, OC), 0);
    cr_assert_eq(kernels_cpu_naive.linear_forward(s->out_ref, s->inp, s->w, s->bias, B, C, OC), 0);
    cr_assert_eq(
        kernels_cpu.linear_backward(s->dinp, s->dw, s->dbias, s->dout, s->inp, s->w, B, C, OC), 0);
    cr_assert_eq(kernels_cpu_naive.linear_backward(s->dinp_ref, s->dw_ref, s->dbias_ref, s->dout,
                                                   s->inp, s->w, B, C, OC),
                 0);
    char what[96];
    snprintf(what, sizeof what, "linear_forward out, B=%d C=%d OC=%d", B, C, OC);
    expect_matrix_close(s->out, s->out_ref, B, OC, tol, what);
    snprintf(what, sizeof what, "linear_backward dinp, B=%d C=%d OC=%d", B, C, OC);
    expect_matrix_close(s->dinp, s->dinp_ref, B, C, tol, what);
    snprintf(what, sizeof what, "linear_backward dw, B=%d C=%d OC=%d", B, C, OC);
    expect_matrix_close(s->dw, s->dw_ref, OC, C, tol, what);
    snprintf(what, sizeof what, "linear_backward dbias, B=%d C=%d OC=%d", B, C, OC);
    expect_matrix_close(s->dbias, s->dbias_ref, 1, OC, tol, what);
}

Test(kernels, tiled_linear_layer_equals_the_naive_one_on_odd_shapes) {
    // Whole numbers: every sum is exact, so the tiles must give the reference's bits.
    for (int bi = 0; bi < COUNT(ODD_B); bi++)
        for (int ci = 0; ci < COUNT(ODD_C); ci++)
            for (int oi = 0; oi < COUNT(ODD_OC); oi++) {
                LinearShape s =
                    linear_shape_new(ODD_B[bi], ODD_C[ci], ODD_OC[oi], fill_small_integers);
                compare_linear_layers(&s, 0.0);
                linear_shape_free(&s);
            }
}

// Floats in [-1, 1), reproducible from (seed, i).
static void fill_unit_floats(float* a, int n, uint64_t seed) {
    fill_uniform(a, n, -1, 1, seed);
}

Test(kernels, tiled_linear_layer_agrees_with_the_naive_one_on_the_lessons_shapes) {
    // The model's three layers at the default batch and hidden size, and the last eval chunk.
    // Each output adds up to 64 products of size <= 1, rounded in both versions: the tiles add
    // them in the same order, but the compiler fuses multiplies and adds in its own places
    // (and the last layer's dot products use partial sums), so the two differ by a few
    // roundings of partial sums below ~10 (2^-24 each, ~6e-7). 1e-5 leaves room for that,
    // while a missing, doubled or misplaced term moves an output by a product, ~0.25.
    const int shapes[][3] = {{32, 1, 64}, {32, 64, 64}, {32, 64, 1}, {16, 64, 64}};
    for (int i = 0; i < COUNT(shapes); i++) {
        LinearShape s =
            linear_shape_new(shapes[i][0], shapes[i][1], shapes[i][2], fill_unit_floats);
        compare_linear_layers(&s, 1e-5);
        linear_shape_free(&s);
    }
}

Test(kernels, tiled_linear_backward_leaves_dinp_alone_when_it_is_null) {
    LinearShape s = linear_shape_new(33, 1, 97, fill_small_integers); // the first layer's shape
    float* untouched = new_floats(s.B * s.C);
    fill_nan(untouched, s.B * s.C);
    cr_assert_eq(
        kernels_cpu.linear_backward(NULL, s.dw, s.dbias, s.dout, s.inp, s.w, s.B, s.C, s.OC), 0);
    cr_assert_eq(kernels_cpu_naive.linear_backward(NULL, s.dw_ref, s.dbias_ref, s.dout, s.inp, s.w,
                                                   s.B, s.C, s.OC),
                 0);
    expect_matrix_close(s.dw, s.dw_ref, s.OC, s.C, 0.0, "linear_backward dw without dinp");
    expect_matrix_close(s.dbias, s.dbias_ref, 1, s.OC, 0.0, "linear_backward dbias without dinp");
    cr_assert_eq(memcmp(s.dinp, untouched, (size_t)s.B * s.C * sizeof(float)), 0,
                 "dinp was written although the call passed NULL");
    free(untouched);
    linear_shape_free(&s);
}

// Lesson 04 calls the backward pass in two halves: the parameters' gradients (dinp NULL),
// then the input's (dw and dbias NULL). Each half must write its own outputs only, and
// give the bits of the whole call, in both tables; float inputs, so that any change in
// the order of a sum would show.
Test(kernels, linear_backward_in_two_halves_gives_the_bits_of_one_call) {
    const Kernels* tables[] = {&kernels_cpu, &kernels_cpu_naive};
    for (int t = 0; t < COUNT(tables); t++) {
        const Kernels* kt = tables[t];
        LinearShape s = linear_shape_new(32, 64, 64, fill_unit_floats);
        int B = s.B, C = s.C, OC = s.OC;
        cr_assert_eq(
            kt->linear_backward(s.dinp_ref, s.dw_ref, s.dbias_ref, s.dout, s.inp, s.w, B, C, OC),
            0);
        cr_assert_eq(kt->linear_backward(NULL, s.dw, s.dbias, s.dout, s.inp, s.w, B, C, OC), 0);
        for (int i = 0; i < B * C; i++)
            cr_assert(isnan(s.dinp[i]), "%s: the parameters' half wrote dinp[%d]", kt->name, i);
        float* dw_before = new_floats(OC * C);
        memcpy(dw_before, s.dw, (size_t)OC * C * sizeof(float));
        cr_assert_eq(kt->linear_backward(s.dinp, NULL, NULL, s.dout, s.inp, s.w, B, C, OC), 0);
        cr_assert_eq(memcmp(s.dw, dw_before, (size_t)OC * C * sizeof(float)), 0,
                     "%s: the input's half wrote dw", kt->name);
        cr_assert_eq(memcmp(s.dinp, s.dinp_ref, (size_t)B * C * sizeof(float)), 0,
                     "%s: dinp differs between one call and two", kt->name);
        cr_assert_eq(memcmp(s.dw, s.dw_ref, (size_t)OC * C * sizeof(float)), 0,
                     "%s: dw differs between one call and two", kt->name);
        cr_assert_eq(memcmp(s.dbias, s.dbias_ref, (size_t)OC * sizeof(float)), 0,
                     "%s: dbias differs between one call and two", kt->name);
        free(dw_before);
        linear_shape_free(&s);
    }
}

Test(kernels, add_scaled_adds_the_scaled_input) {
    float sum[5] = {1.0f, -2.0f, 0.5f, 0.0f, 8.0f};
    const float x[5] = {2.0f, 4.0f, -1.0f, 3.0f, 0.25f};
    const double want[5] = {1.5, -1.0, 0.25, 0.75, 8.0625};
    cr_assert_eq(k->add_scaled(sum, x, 0.25f, 5), 0);
    expect_close(sum, want, 5, 0.0, "add_scaled with scale 0.25");
}

// ----------------------------------------------------------------------------
// backward passes against finite differences, layer by layer

typedef struct {
    float *out, *inp, *w, *bias, *r; // out, r (B, OC); inp (B, C); w (OC, C); bias (OC)
    int B, C, OC;
} LinearCase;

static double linear_scalar(void* ctx) {
    LinearCase* c = ctx;
    k->linear_forward(c->out, c->inp, c->w, c->bias, c->B, c->C, c->OC);
    return dot_double(c->out, c->r, c->B * c->OC);
}

Test(kernels, linear_backward_matches_finite_differences) {
    LinearCase c = {.B = 3, .C = 5, .OC = 4};
    int nin = c.B * c.C, nw = c.OC * c.C, nout = c.B * c.OC;
    c.inp = new_floats(nin), c.w = new_floats(nw), c.bias = new_floats(c.OC);
    c.out = new_floats(nout), c.r = new_floats(nout);
    fill_uniform(c.inp, nin, -1, 1, 1);
    fill_uniform(c.w, nw, -1, 1, 2);
    fill_uniform(c.bias, c.OC, -1, 1, 3);
    fill_uniform(c.r, nout, -1, 1, 4);

    float *dinp = new_floats(nin), *dw = new_floats(nw), *dbias = new_floats(c.OC);
    fill_nan(dinp, nin), fill_nan(dw, nw), fill_nan(dbias, c.OC);
    cr_assert_eq(k->linear_backward(dinp, dw, dbias, c.r, c.inp, c.w, c.B, c.C, c.OC), 0);

    // L is linear in each input, so the central difference has no truncation
    // error: what is left is rounding. A perturbation changes at most B = 3
    // outputs of size <= 3.5, each rounded to 2^-24 relative a few times
    // (~1e-6 in all, with |r| <= 1); divided by the step 2e-3 that is ~5e-4
    // at worst and ~1e-4 typically. Gradients are O(1), so 1e-3 still catches
    // any wrong term.
    double* fd = new_doubles(nw);
    finite_difference_gradient(fd, linear_scalar, &c, c.inp, nin);
    expect_close(dinp, fd, nin, 1e-3, "linear dinp vs finite differences");
    finite_difference_gradient(fd, linear_scalar, &c, c.w, nw);
    expect_close(dw, fd, nw, 1e-3, "linear dw vs finite differences");
    finite_difference_gradient(fd, linear_scalar, &c, c.bias, c.OC);
    expect_close(dbias, fd, c.OC, 1e-3, "linear dbias vs finite differences");

    // Without dinp (the model's first layer) the other gradients are the same.
    float *dw2 = new_floats(nw), *dbias2 = new_floats(c.OC);
    cr_assert_eq(k->linear_backward(NULL, dw2, dbias2, c.r, c.inp, c.w, c.B, c.C, c.OC), 0);
    cr_assert_eq(memcmp(dw2, dw, (size_t)nw * sizeof(float)), 0, "dw changes when dinp is NULL");
    cr_assert_eq(memcmp(dbias2, dbias, (size_t)c.OC * sizeof(float)), 0,
                 "dbias changes when dinp is NULL");
    free(c.inp), free(c.w), free(c.bias), free(c.out), free(c.r);
    free(dinp), free(dw), free(dbias), free(dw2), free(dbias2), free(fd);
}

typedef struct {
    float *out, *inp, *r; // (N)
    int N;
} ReluCase;

static double relu_scalar(void* ctx) {
    ReluCase* c = ctx;
    k->relu_forward(c->out, c->inp, c->N);
    return dot_double(c->out, c->r, c->N);
}

Test(kernels, relu_backward_matches_finite_differences) {
    ReluCase c = {.N = 20};
    c.inp = new_floats(c.N), c.out = new_floats(c.N), c.r = new_floats(c.N);
    // |inp| >= 0.1, alternating signs: a step of 1e-3 never crosses the kink at 0.
    fill_uniform(c.inp, c.N, 0.1, 1, 5);
    for (int i = 0; i < c.N; i += 2)
        c.inp[i] = -c.inp[i];
    fill_uniform(c.r, c.N, -1, 1, 6);
    relu_scalar(&c);
    float* dinp = new_floats(c.N);
    fill_nan(dinp, c.N);
    cr_assert_eq(k->relu_backward(dinp, c.r, c.out, c.N), 0);
    // Piecewise linear and one output per input: the difference is exact up to
    // one rounding of out (~6e-8) over the step 2e-3, i.e. ~3e-5.
    double* fd = new_doubles(c.N);
    finite_difference_gradient(fd, relu_scalar, &c, c.inp, c.N);
    expect_close(dinp, fd, c.N, 1e-4, "relu dinp vs finite differences");
    free(c.inp), free(c.out), free(c.r), free(dinp), free(fd);
}

typedef struct {
    float *out, *mean, *rstd, *inp, *gamma, *beta, *r; // out, inp, r (B, C); mean, rstd (B)
    int B, C;
} LayerNormCase;

static double layernorm_scalar(void* ctx) {
    LayerNormCase* c = ctx;
    k->layernorm_forward(c->out, c->mean, c->rstd, c->inp, c->gamma, c->beta, c->B, c->C);
    return dot_double(c->out, c->r, c->B * c->C);
}

Test(kernels, layernorm_backward_matches_finite_differences) {
    LayerNormCase c = {.B = 3, .C = 8};
    int n = c.B * c.C;
    c.inp = new_floats(n), c.out = new_floats(n), c.r = new_floats(n);
    c.mean = new_floats(c.B), c.rstd = new_floats(c.B);
    c.gamma = new_floats(c.C), c.beta = new_floats(c.C);
    fill_uniform(c.inp, n, -2, 2, 7);
    // gamma away from 1 and beta away from 0, so forgetting either one shows.
    fill_uniform(c.gamma, c.C, 0.5, 1.5, 8);
    fill_uniform(c.beta, c.C, -0.5, 0.5, 9);
    fill_uniform(c.r, n, -1, 1, 10);
    layernorm_scalar(&c); // the saved mean and rstd of the unperturbed input

    float *dinp = new_floats(n), *dgamma = new_floats(c.C), *dbeta = new_floats(c.C);
    fill_nan(dinp, n), fill_nan(dgamma, c.C), fill_nan(dbeta, c.C);
    cr_assert_eq(
        k->layernorm_backward(dinp, dgamma, dbeta, c.r, c.inp, c.mean, c.rstd, c.gamma, c.B, c.C),
        0);
    // Rounding: a perturbed input moves its whole row of C = 8 outputs of size
    // <= ~3 (rstd ~ 1), ~1e-6 in L over the step 2e-3: ~5e-4 at worst. The
    // truncation error h^2/6 * L''' is ~1e-7 for these O(1) rows. Gradients are
    // O(1), so 1e-3 catches any missing term (the mean's and the variance's
    // contributions are each O(1/C) of the row sum, ~0.1 here).
    double* fd = new_doubles(n);
    finite_difference_gradient(fd, layernorm_scalar, &c, c.inp, n);
    expect_close(dinp, fd, n, 1e-3, "layernorm dinp vs finite differences");
    finite_difference_gradient(fd, layernorm_scalar, &c, c.gamma, c.C);
    expect_close(dgamma, fd, c.C, 1e-3, "layernorm dgamma vs finite differences");
    finite_difference_gradient(fd, layernorm_scalar, &c, c.beta, c.C);
    expect_close(dbeta, fd, c.C, 1e-3, "layernorm dbeta vs finite differences");
    free(c.inp), free(c.out), free(c.r), free(c.mean), free(c.rstd), free(c.gamma), free(c.beta);
    free(dinp), free(dgamma), free(dbeta), free(fd);
}

typedef struct {
    float *pred, *target; // (B)
    int B;
} MseCase;

// The kernel's own loss (the batch mean: scale 1/B), read back as a double.
static double mse_scalar(void* ctx) {
    MseCase* c = ctx;
    float loss = 0.0f;
    k->mse_forward(&loss, c->pred, c->target, 1.0f / c->B, c->B);
    return loss;
}

Test(kernels, mse_backward_matches_finite_differences) {
    MseCase c = {.B = 7};
    c.pred = new_floats(c.B), c.target = new_floats(c.B);
    fill_uniform(c.pred, c.B, -1, 1, 11);
    fill_uniform(c.target, c.B, -1, 1, 12);
    float* dpred = new_floats(c.B);
    fill_nan(dpred, c.B);
    cr_assert_eq(k->mse_backward(dpred, c.pred, c.target, c.B), 0);
    // Here L is the kernel's float loss (~0.7), so it carries a few roundings of
    // ~4e-8 each: ~2e-7 over the step 2e-3 is ~1e-4. L is quadratic, so the
    // central difference has no truncation error. Gradients are ~0.3.
    double* fd = new_doubles(c.B);
    finite_difference_gradient(fd, mse_scalar, &c, c.pred, c.B);
    expect_close(dpred, fd, c.B, 3e-4, "mse dpred vs finite differences");
    free(c.pred), free(c.target), free(dpred), free(fd);
}

// ----------------------------------------------------------------------------
// the whole model against finite differences

typedef struct {
    Mlp* m;
    const float* y; // (B) targets, on the host
    int B;
    int crossed;      // set when a pre-activation changed sign since the reference pass
    float* ref_signs; // (2 B H) 1 where h1 and ln were positive in the reference pass
} NetCase;

// The pre-activations of the two ReLUs: h1 (B, H) then ln (B, H).
static void relu_inputs_positive(const NetCase* c, float* signs) {
    int BH = c->B * c->m->hidden;
    for (int i = 0; i < BH; i++) {
        signs[i] = c->m->h1[i] > 0.0f;
        signs[BH + i] = c->m->ln[i] > 0.0f;
    }
}

// The mean squared error of a forward pass, summed in double from the float predictions.
static double net_scalar(void* ctx) {
    NetCase* c = ctx;
    cr_assert_eq(mlp_forward(c->m, c->B), 0);
    double sum = 0.0;
    for (int b = 0; b < c->B; b++)
        sum += ((double)c->m->out[b] - c->y[b]) * ((double)c->m->out[b] - c->y[b]);
    int BH = c->B * c->m->hidden;
    for (int i = 0; i < 2 * BH && c->ref_signs != NULL; i++) {
        float positive = i < BH ? c->m->h1[i] > 0.0f : c->m->ln[i - BH] > 0.0f;
        if (positive != c->ref_signs[i])
            c->crossed = 1;
    }
    return sum / c->B;
}

// Up to count distinct indices in [0, n), reproducible from seed (all of them if n <= count).
static int sample_indices(int* out, int n, int count, uint64_t seed) {
    int* all = malloc((size_t)n * sizeof(int));
    cr_assert_not_null(all);
    for (int i = 0; i < n; i++)
        all[i] = i;
    int taken = n < count ? n : count;
    for (int i = 0; i < taken; i++) { // the first steps of a Fisher-Yates shuffle
        int j = i + (int)(rng_u64(seed, TEST_STREAM, (uint64_t)i) % (uint64_t)(n - i));
        int tmp = all[i];
        all[i] = all[j], all[j] = tmp;
        out[i] = all[i];
    }
    free(all);
    return taken;
}

Test(mlp, backward_matches_finite_differences_of_the_whole_model) {
    enum { H = 64, B = 4, PER_TENSOR = 28 };
    Dataset data;
    Mlp m;
    cr_assert_eq(dataset_create(&data, 100, 42), 0);
    cr_assert_eq(mlp_create(&m, &kernels_cpu, H, B), 0);
    cr_assert_eq(mlp_init_params(&m, 42), 0);
    // LayerNorm starts at gamma = 1, beta = 0, where forgetting either is invisible.
    fill_uniform(m.p.ln_gamma, H, 0.5, 1.5, 13);
    fill_uniform(m.p.ln_beta, H, -0.3, 0.3, 14);
    int indices[B] = {0, 17, 42, 63};
    cr_assert_eq(mlp_load_batch(&m, data.x, data.y, indices, B), 0);
    cr_assert_eq(mlp_forward(&m, B), 0);
    cr_assert_eq(mlp_loss(&m, 1.0f / B, B), 0);
    fill_nan(m.grads, m.num_params);
    cr_assert_eq(mlp_backward(&m, B), 0);

    NetCase c = {.m = &m, .y = m.y, .B = B};
    double loss = net_scalar(&c);
    float kernel_loss;
    cr_assert_eq(mlp_take_loss(&m, &kernel_loss), 0);
    expect_close(&kernel_loss, &loss, 1, 1e-6 * loss, "mlp_loss vs the mean squared error");
    c.ref_signs = new_floats(2 * B * H);
    relu_inputs_positive(&c, c.ref_signs);

    // Every tensor, each sampled at up to PER_TENSOR parameters (b3 has one): ~200 in all.
    struct {
        const char* name;
        float *p, *g;
        int n;
    } tensors[] = {
        {"w1", m.p.w1, m.g.w1, H},
        {"b1", m.p.b1, m.g.b1, H},
        {"w2", m.p.w2, m.g.w2, H * H},
        {"b2", m.p.b2, m.g.b2, H},
        {"ln_gamma", m.p.ln_gamma, m.g.ln_gamma, H},
        {"ln_beta", m.p.ln_beta, m.g.ln_beta, H},
        {"w3", m.p.w3, m.g.w3, H},
        {"b3", m.p.b3, m.g.b3, 1},
    };
    int checked = 0, skipped = 0;
    for (size_t t = 0; t < sizeof tensors / sizeof *tensors; t++) {
        int picks[PER_TENSOR];
        int count = sample_indices(picks, tensors[t].n, PER_TENSOR, 100 + t);
        float got[PER_TENSOR];
        double want[PER_TENSOR];
        int kept = 0;
        for (int i = 0; i < count; i++) {
            c.crossed = 0;
            double fd = central_difference(net_scalar, &c, tensors[t].p, picks[i]);
            // A ReLU input that changes sign within the step puts a kink inside the
            // difference: the derivative is not defined there, so leave it out.
            if (c.crossed) {
                skipped++;
                continue;
            }
            got[kept] = tensors[t].g[picks[i]];
            want[kept] = fd;
            kept++;
        }
        // Rounding: each of the B = 4 predictions (~0.5) carries ~1e-6 of
        // accumulated float error after three layers of 64-term sums; through
        // L = mean (out - y)^2 that is ~1e-6 in L, over the step 2e-3: ~5e-4.
        // Truncation, h^2/6 * L''', stays below 1e-6 for these O(1) weights.
        // The largest gradients are ~0.5; 1e-3 is a fraction of a percent of them.
        char what[64];
        snprintf(what, sizeof what, "mlp grads of %s vs finite differences", tensors[t].name);
        expect_close(got, want, kept, 1e-3, what);
        checked += kept;
    }
    cr_assert_geq(checked, 180, "only %d parameters checked (%d skipped at a ReLU kink)", checked,
                  skipped);
    free(c.ref_signs);
    mlp_free(&m);
    dataset_free(&data);
}

// ----------------------------------------------------------------------------
// optimizer steps against torch.optim's documented formulas

// torch.optim.Adam, as documented (no weight decay, no amsgrad), in double:
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   m_hat = m / (1 - b1^t); v_hat = v / (1 - b2^t); p -= lr m_hat / (sqrt(v_hat) + eps)
static void adam_reference(double* p, double* m, double* v, const double* g, int n, double lr,
                           double b1, double b2, double eps, int t) {
    for (int i = 0; i < n; i++) {
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        double m_hat = m[i] / (1 - pow(b1, t)), v_hat = v[i] / (1 - pow(b2, t));
        p[i] -= lr * m_hat / (sqrt(v_hat) + eps);
    }
}

static void to_floats(float* out, const double* in, int n) {
    for (int i = 0; i < n; i++)
        out[i] = (float)in[i];
}

// One Adam step from state (p, m, v) at step t, checked against adam_reference.
static void check_adam_step(const double* p0, const double* m0, const double* v0, const double* g,
                            int n, int t) {
    AdamSettings s = {
        .learning_rate = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .step = t};
    float p[8], m[8], v[8], gf[8];
    double want_p[8], want_m[8], want_v[8];
    cr_assert_leq(n, 8);
    to_floats(p, p0, n), to_floats(m, m0, n), to_floats(v, v0, n), to_floats(gf, g, n);
    memcpy(want_p, p0, n * sizeof(double));
    memcpy(want_m, m0, n * sizeof(double));
    memcpy(want_v, v0, n * sizeof(double));
    // the reference uses the float settings the kernel gets, widened to double
    adam_reference(want_p, want_m, want_v, g, n, s.learning_rate, s.beta1, s.beta2, s.eps, t);
    cr_assert_eq(k->adam_update(p, m, v, gf, s, n), 0);
    // The step is ~lr = 0.01; float rounding of p (~1e-7 for |p| <= 2) and of
    // the step (~1e-9) stay below 2e-7, while a wrong bias correction or a
    // misplaced eps moves p by a good part of the step (>= 1e-4).
    expect_close(p, want_p, n, 2e-7, "adam params");
    // m and v span several orders of magnitude: compare them relatively, a few roundings.
    expect_close_relative(m, want_m, n, 1e-6, "adam first moment");
    expect_close_relative(v, want_v, n, 1e-6, "adam second moment");
}

Test(optimizer, adam_first_step_matches_torch_formula) {
    // From zero moments the first step is lr * g / (|g| + eps): about lr * sign(g).
    // The last gradient, 1e-7, is near eps: the step is lr / 1.1, which shows
    // whether eps is added after the bias correction of v, as torch does.
    double p0[] = {0.5, -1.0, 2.0, 0.0, 1.0}, g[] = {0.1, -0.3, 0.5, 2.0, 1e-7}, zero[5] = {0};
    check_adam_step(p0, zero, zero, g, 5, 1);
}

Test(optimizer, adam_later_step_applies_both_bias_corrections) {
    // At step 3 the corrections 1 - 0.9^3 = 0.271 and 1 - 0.999^3 ~ 0.003 are far from 1.
    double p0[] = {0.5, -1.0, 2.0, 0.25}, g[] = {0.1, -0.3, 0.5, 2.0};
    double m0[] = {0.05, -0.02, 0.01, 0.3}, v0[] = {0.004, 0.001, 0.0002, 0.5};
    check_adam_step(p0, m0, v0, g, 4, 3);
}

Test(optimizer, adam_leaves_a_parameter_with_zero_gradient_and_moments_alone) {
    // m = v = 0 and g = 0: the update is 0 / (0 + eps) = 0, never 0 / 0.
    float p = 1.5f, m = 0.0f, v = 0.0f, g = 0.0f;
    AdamSettings s = {0.01f, 0.9f, 0.999f, 1e-8f, 1};
    cr_assert_eq(k->adam_update(&p, &m, &v, &g, s, 1), 0);
    double want = 1.5;
    expect_close(&p, &want, 1, 0.0, "adam param with zero gradient");
}

// Fails unless every a[i] is +0, bit for bit. Bits, not a comparison: with denormals-are-zero
// set, the CPU itself would compare a subnormal equal to 0.
static void expect_positive_zeros(const float* a, int n, const char* what) {
    for (int i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &a[i], sizeof bits);
        cr_assert_eq(bits, 0, "%s: element [%d] has the bits 0x%08x, not those of +0", what, i,
                     (unsigned)bits);
    }
}

Test(optimizer, cpu_updates_flush_moments_below_flt_min_to_zero) {
#if !defined(__x86_64__) && !defined(__aarch64__)
    cr_skip_test("kernels_cpu knows no flush-to-zero mode on this CPU");
#endif
    // A parameter behind a ReLU that never fires gets gradient 0, and its moment decays by
    // beta1 = 0.9 a step. From FLT_MIN, the smallest normal float, the next one is subnormal:
    // flush-to-zero writes it as 0. One that is already subnormal (from a checkpoint, say)
    // is read as 0 (denormals-are-zero). The CPU table's alloc sets both for this thread.
    enum { N = 2 };
    float* state = k->alloc(4 * N * sizeof(float));
    cr_assert_not_null(state);
    float *p = state, *m = p + N, *v = m + N, *g = v + N;
    float start[N] = {FLT_MIN, FLT_MIN / 4};
    for (int i = 0; i < N; i++)
        p[i] = 1.0f, m[i] = start[i], v[i] = 1e-6f, g[i] = 0.0f;
    AdamSettings s = {0.01f, 0.9f, 0.999f, 1e-8f, 100};
    cr_assert_eq(k->adam_update(p, m, v, g, s, N), 0);
    expect_positive_zeros(m, N, "adam first moments from FLT_MIN and FLT_MIN / 4 with g = 0");
    double ones[N] = {1, 1};
    expect_close(p, ones, N, 0.0, "adam params with g = 0 and a flushed first moment");
    // SGD's velocity decays the same way
    for (int i = 0; i < N; i++)
        m[i] = start[i];
    cr_assert_eq(k->sgd_update(p, m, g, 0.01f, 0.9f, N), 0);
    expect_positive_zeros(m, N, "sgd velocities from FLT_MIN and FLT_MIN / 4 with g = 0");
    k->release(state);
}

Test(optimizer, sgd_momentum_two_steps_match_torch_formula) {
    // torch.optim.SGD(momentum=mu, dampening=0): the buffer starts as the first
    // gradient, then buf = mu buf + g; p -= lr buf each step.
    const double lr = 0.1, mu = 0.9;
    double p[] = {1.0, -0.5, 0.25};
    const double g1[] = {0.2, -0.4, 0.0}, g2[] = {0.1, 0.3, -0.5};
    float pf[3], velocity[3] = {0}, gf[3];
    to_floats(pf, p, 3);

    double buf[3];
    for (int i = 0; i < 3; i++) {
        buf[i] = g1[i];
        p[i] -= lr * buf[i];
    }
    to_floats(gf, g1, 3);
    cr_assert_eq(k->sgd_update(pf, velocity, gf, (float)lr, (float)mu, 3), 0);
    // After step 1: p = {0.98, -0.46, 0.25}. Roundings of O(1) floats: 1e-7.
    expect_close(pf, p, 3, 1e-7, "sgd params after step 1");
    expect_close(velocity, buf, 3, 1e-7, "sgd velocity after step 1");

    for (int i = 0; i < 3; i++) {
        buf[i] = mu * buf[i] + g2[i];
        p[i] -= lr * buf[i];
    }
    to_floats(gf, g2, 3);
    cr_assert_eq(k->sgd_update(pf, velocity, gf, (float)lr, (float)mu, 3), 0);
    // After step 2: buf = {0.28, -0.06, -0.5}, p = {0.952, -0.454, 0.3}.
    double literal[] = {0.952, -0.454, 0.3};
    expect_close(pf, p, 3, 2e-7, "sgd params after step 2");
    expect_close(pf, literal, 3, 2e-7, "sgd params after step 2 (the literal values)");
    expect_close(velocity, buf, 3, 1e-7, "sgd velocity after step 2");
}
