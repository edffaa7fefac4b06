/*
 * test_buckets.c - lesson 04's two building blocks: DDP's buckets, and the backward pass
 * that says which gradients are final as it goes.
 *
 * Buckets (common/buckets.h): for the model at several hidden sizes and for odd tensor
 * sizes, at caps from 4 bytes to 1 GiB, every parameter lies in exactly one bucket, the
 * buckets run from the buffer's end to its start (the last layer's first), and each one
 * obeys DDP's rule: it closed at the first tensor that took it to the cap or beyond (only
 * the last bucket may stay under). The default model's boundaries at the lesson's caps
 * are spelled out as well; tests/test_torch.c compares them with PyTorch's own function.
 *
 * The announcing backward pass (mlp_backward_announcing): the ranges it announces shrink
 * from the end of the buffer to 0, what it calls final is final (not touched again),
 * and the gradients are mlp_backward's, bit for bit.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buckets.h"
#include "data.h"
#include "kernels.h"
#include "mlp.h"

#define COUNT(a) ((int)(sizeof(a) / sizeof *(a)))

// ----------------------------------------------------------------------------
// buckets

// Every property of DDP's assignment, for tensors of sizes (n, in buffer order).
static void expect_ddp_buckets(const int* sizes, int n, size_t cap_bytes) {
    Buckets got;
    buckets_assign(&got, sizes, n, cap_bytes);
    int total = 0;
    for (int t = 0; t < n; t++)
        total += sizes[t];
    cr_assert(got.count >= 1 && got.count <= n, "cap %zu: %d buckets for %d tensors", cap_bytes,
              got.count, n);
    // Contiguous, from the end of the buffer to its start: every parameter exactly once.
    int end = total, tensor = n; // the first tensor after the bucket being checked
    for (int i = 0; i < got.count; i++) {
        const Bucket* b = &got.b[i];
        cr_assert_eq(b->first + b->count, end,
                     "cap %zu: bucket %d is [%d, %d), want it to end at %d", cap_bytes, i, b->first,
                     b->first + b->count, end);
        cr_assert(b->tensors >= 1 && b->tensors <= tensor, "cap %zu: bucket %d holds %d tensors",
                  cap_bytes, i, b->tensors);
        int first_tensor = tensor - b->tensors, floats = 0;
        for (int t = first_tensor; t < tensor; t++)
            floats += sizes[t];
        cr_assert_eq(floats, b->count, "cap %zu: bucket %d's %d tensors hold %d floats, not %d",
                     cap_bytes, i, b->tensors, floats, b->count);
        // DDP's rule: it was under the cap before its last tensor (the earliest in the
        // buffer, added last) and, unless it is the last bucket, reached the cap with it.
        size_t before_last = (size_t)(b->count - sizes[first_tensor]) * sizeof(float);
        cr_assert_lt(before_last, cap_bytes,
                     "cap %zu: bucket %d was full (%zu bytes) before its last tensor", cap_bytes, i,
                     before_last);
        if (i < got.count - 1)
            cr_assert_geq((size_t)b->count * sizeof(float), cap_bytes,
                          "cap %zu: bucket %d closed at %zu bytes, under the cap", cap_bytes, i,
                          (size_t)b->count * sizeof(float));
        end = b->first;
        tensor = first_tensor;
    }
    cr_assert_eq(end, 0, "cap %zu: the buckets leave [0, %d) out", cap_bytes, end);
    cr_assert_eq(tensor, 0, "cap %zu: the buckets leave %d tensors out", cap_bytes, tensor);
}

Test(buckets, every_parameter_is_in_one_bucket_last_layer_first_for_many_caps) {
    const size_t caps[] = {4,    100,   256,   257,   1000,    1024,
                           4096, 16384, 16385, 65536, 1 << 20, (size_t)1 << 30};
    const int hidden[] = {1, 7, 64, 512};
    for (int h = 0; h < COUNT(hidden); h++) {
        int sizes[MLP_TENSORS];
        mlp_tensor_sizes(hidden[h], sizes);
        for (int c = 0; c < COUNT(caps); c++)
            expect_ddp_buckets(sizes, MLP_TENSORS, caps[c]);
    }
    const int odd[] = {5, 1, 300, 2, 2, 999, 1, 64};
    for (int c = 0; c < COUNT(caps); c++)
        expect_ddp_buckets(odd, COUNT(odd), caps[c]);
}

// The default model (hidden 64): tensors w1 b1 w2 b2 gamma beta w3 b3 of 64, 64, 4096, 64,
// 64, 64, 64 and 1 floats. Expected: each bucket's first float and float count, last
// layer first.
typedef struct {
    size_t cap_bytes;
    int count;
    int first[MLP_TENSORS], floats[MLP_TENSORS];
} Expected;

Test(buckets, the_default_models_boundaries_at_the_lessons_caps) {
    const Expected cases[] = {
        // 1 KiB, the lesson's default: b3 w3 beta gamma b2 (1028 bytes) | w2 | b1 w1.
        {1024, 3, {4224, 128, 0}, {257, 4096, 128}},
        // 256 bytes: b3 w3 | beta | gamma | b2 | w2 | b1 | w1.
        {256, 7, {4416, 4352, 4288, 4224, 128, 64, 0}, {65, 64, 64, 64, 4096, 64, 64}},
        // 16 KiB: w2 takes the first bucket over the cap.
        {16384, 2, {128, 0}, {4353, 128}},
        // DDP's 25 MB: one bucket, as lesson 02's one all-reduce.
        {25u << 20, 1, {0}, {4481}},
    };
    int sizes[MLP_TENSORS];
    mlp_tensor_sizes(64, sizes);
    for (int c = 0; c < COUNT(cases); c++) {
        Buckets got;
        buckets_assign(&got, sizes, MLP_TENSORS, cases[c].cap_bytes);
        cr_assert_eq(got.count, cases[c].count, "cap %zu: %d buckets, want %d", cases[c].cap_bytes,
                     got.count, cases[c].count);
        for (int i = 0; i < got.count; i++)
            cr_assert(got.b[i].first == cases[c].first[i] && got.b[i].count == cases[c].floats[i],
                      "cap %zu: bucket %d is %d floats from %d, want %d from %d",
                      cases[c].cap_bytes, i, got.b[i].count, got.b[i].first, cases[c].floats[i],
                      cases[c].first[i]);
    }
}

// ----------------------------------------------------------------------------
// the backward pass that announces its gradients

#define MAX_ANNOUNCED 16

// What the announcements said: each range's start, and a copy of the gradients then.
typedef struct {
    const Mlp* m;
    int count;
    int from[MAX_ANNOUNCED];
    float* snapshot[MAX_ANNOUNCED]; // (num_params) the whole buffer at the announcement
} Announced;

static int record(void* ctx, int ready_from) {
    Announced* a = ctx;
    cr_assert_lt(a->count, MAX_ANNOUNCED, "more than %d announcements", MAX_ANNOUNCED);
    a->from[a->count] = ready_from;
    a->snapshot[a->count] = malloc((size_t)a->m->num_params * sizeof(float));
    cr_assert_not_null(a->snapshot[a->count]);
    memcpy(a->snapshot[a->count], a->m->grads, (size_t)a->m->num_params * sizeof(float));
    a->count++;
    return 0;
}

Test(mlp, the_announcing_backward_pass_announces_only_final_gradients_and_gives_the_same_ones) {
    enum { H = 64, B = 8 };
    Dataset data;
    Mlp m;
    cr_assert_eq(dataset_create(&data, 100, 42), 0);
    cr_assert_eq(mlp_create(&m, &kernels_cpu, H, B), 0);
    cr_assert_eq(mlp_init_params(&m, 42), 0);
    int indices[B] = {0, 3, 17, 42, 50, 63, 70, 99};
    cr_assert_eq(mlp_load_batch(&m, data.x, data.y, indices, B), 0);
    cr_assert_eq(mlp_forward(&m, B), 0);
    cr_assert_eq(mlp_backward(&m, B), 0);
    float* plain = malloc((size_t)m.num_params * sizeof(float));
    cr_assert_not_null(plain);
    memcpy(plain, m.grads, (size_t)m.num_params * sizeof(float));

    for (int i = 0; i < m.num_params; i++) // a value no gradient has, to see what is written
        m.grads[i] = 1e30f;
    Announced a = {.m = &m};
    cr_assert_eq(mlp_backward_announcing(&m, B, record, &a), 0);
    cr_assert_eq(memcmp(m.grads, plain, (size_t)m.num_params * sizeof(float)), 0,
                 "the announcing pass's gradients differ from mlp_backward's");
    cr_assert_geq(a.count, 2, "%d announcements: nothing to overlap", a.count);
    cr_assert_eq(a.from[a.count - 1], 0, "the last announcement is from %d, not 0",
                 a.from[a.count - 1]);
    for (int i = 0; i < a.count; i++) {
        cr_assert(i == 0 || a.from[i] < a.from[i - 1],
                  "announcement %d (from %d) after one from %d", i, a.from[i], a.from[i - 1]);
        size_t final = (size_t)(m.num_params - a.from[i]) * sizeof(float);
        cr_assert_eq(memcmp(a.snapshot[i] + a.from[i], plain + a.from[i], final), 0,
                     "announcement %d called [%d, %d) final, but it changed later", i, a.from[i],
                     m.num_params);
        free(a.snapshot[i]);
    }
    free(plain);
    mlp_free(&m);
    dataset_free(&data);
}
