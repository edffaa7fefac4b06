/*
 * buckets.c - DDP's assignment of gradients to buckets (see buckets.h).
 */
#include "buckets.h"

#include <stdbool.h>

void buckets_assign(Buckets* out, const int* sizes, int n, size_t cap_bytes) {
    int end = 0;
    for (int t = 0; t < n; t++)
        end += sizes[t];
    out->count = 0;
    bool open = false; // the last bucket still takes tensors
    // From the last tensor to the first: the order in which the backward pass makes them.
    for (int t = n - 1; t >= 0; t--) {
        end -= sizes[t];
        if (!open)
            out->b[out->count++] = (Bucket){0};
        Bucket* b = &out->b[out->count - 1];
        b->first = end;
        b->count += sizes[t];
        b->tensors++;
        open = (size_t)b->count * sizeof(float) < cap_bytes;
    }
}
