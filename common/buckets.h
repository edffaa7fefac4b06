/*
 * buckets.h - gradient buckets, as PyTorch's DistributedDataParallel makes them.
 *
 * DDP does not all-reduce the gradients in one call after the backward pass: it groups
 * them into buckets, in reverse order of the model's parameters (the order in which the
 * backward pass makes them), and starts each bucket's all-reduce as soon as its last
 * gradient is final, while the backward pass goes on with the earlier layers. A bucket
 * takes tensors until it holds the cap (DDP's bucket_cap_mb) or more, the tensor that
 * took it there included, as torch.distributed's _compute_bucket_assignment_by_size
 * does (tests/test_torch.c compares the two); DDP caps its first bucket at 1 MiB and the
 * rest at bucket_cap_mb, this lesson has one cap for all. Since the model's tensors lie
 * in the gradient buffer in order, every bucket is one contiguous range of it, and the
 * buckets, last layer first, run from the end of the buffer to its start.
 *
 * APIs: Bucket, Buckets, buckets_assign.
 */
#ifndef BUCKETS_H
#define BUCKETS_H

#include <stddef.h>

#include "mlp.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int first;   // the bucket is gradients [first, first + count) of the buffer
    int count;   // floats
    int tensors; // how many of the model's tensors it holds
} Bucket;

typedef struct {
    Bucket b[MLP_TENSORS]; // (count) in the order they become ready: the last layer's first
    int count;
} Buckets;

// The buckets for tensors of sizes (n, in buffer order) with a cap of cap_bytes.
void buckets_assign(Buckets* out, const int* sizes, int n, size_t cap_bytes);

#ifdef __cplusplus
}
#endif

#endif
