/*
 * fast_step.h - the GPU's two faster ways through a batch (--kernels graph and fused), which
 * mlp.c's batch functions hand a batch to (the one place that knows them).
 *
 * A step of the model is about 22 small kernels; on a GPU each launch costs a few
 * microseconds, more than the kernel's work at the defaults. Two ways cut that:
 *   graph  the kernels of a batch (forward, loss, backward and, for a training step, the
 *          update) are captured once into a CUDA graph and replayed for every batch: one
 *          launch instead of 22. The graph's arguments are fixed, so what changes from step
 *          to step is read from device memory instead: the batch's start (a cursor) and
 *          Adam's step (a counter), both advanced by the graph's last node.
 *   fused  one kernel, one block, does the batch's forward, loss, backward and (for a training
 *          step) the optimizer's update, with the weights and activations in shared memory:
 *          one launch per step. It fits models whose weights and activations fit one block's
 *          shared memory (fused_shared_bytes); every sum keeps a fixed order, no atomics.
 * Both compute the separate kernels' sums (kernels_cuda.cuh), so they agree with the CPU twin
 * to rounding, and give the same bits on every run. The functions are in fast_step_cuda.cu,
 * in builds with CUDA only; fused_shared_bytes, which decides what fits, is in every build.
 *
 * Shapes: B batch rows, H hidden features.
 * APIs: FUSED_THREADS, fused_shared_bytes, FastStep, FastPass, FastUpdate, fast_step_create,
 *       fast_step_run, fast_step_free, fast_step_shared_limit.
 */
#ifndef FAST_STEP_H
#define FAST_STEP_H

#include <stddef.h>

#include "mlp.h"

#ifdef __cplusplus
extern "C" {
#endif

// Threads of the fused kernel's one block: 16 warps.
#define FUSED_THREADS 512

// The fused kernel's shared memory for hidden H and B rows, in bytes: the parameters
// (w2 transposed and padded by a column: (H, H + 1)), five (B, H) activations, six of (B),
// and one float per warp.
static inline size_t fused_shared_bytes(int H, int B) {
    size_t h = (size_t)H, b = (size_t)B;
    size_t floats = h * (h + 1) + 6 * h + 1 + 5 * b * h + 6 * b + FUSED_THREADS / 32;
    return floats * sizeof(float);
}

typedef struct FastStep FastStep;

typedef enum {
    FAST_LOSS,      // forward and loss (evaluation)
    FAST_GRADIENTS, // forward, loss and backward: the gradients in m->grads
    FAST_STEP,      // FAST_GRADIENTS and the optimizer's update
} FastPass;

// What FAST_STEP's update does: the optimizer, Adam's settings of this step (whose
// learning_rate SGD uses too) and SGD's momentum.
typedef struct {
    OptimizerKind kind;
    AdamSettings adam;
    float momentum;
} FastUpdate;

// The state of one model's graph or fused step (kernels: MLP_KERNELS_GRAPH or _FUSED) on the
// current GPU. Refuses (-1, after reporting why) a fused step whose model does not fit.
int fast_step_create(FastStep** out, const Mlp* m, MlpKernels kernels);
// Runs pass over batch b; update is FAST_STEP's (else NULL). Returns 0 or -1.
int fast_step_run(FastStep* fs, Mlp* m, const MlpBatch* b, FastPass pass, const FastUpdate* update);
void fast_step_free(FastStep* fs);
// The shared memory that one block may have on the current GPU (opted in), or 0 after
// reporting why it cannot be known.
size_t fast_step_shared_limit(void);

#ifdef __cplusplus
}
#endif

#endif
