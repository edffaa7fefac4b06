/*
 * mlp.h - the model: Linear(1,H) -> ReLU -> Linear(H,H) -> LayerNorm(H) -> ReLU -> Linear(H,1).
 *
 * All parameters live in one contiguous buffer and all gradients in another,
 * laid out alike, so that one all-reduce averages every gradient at once
 * (lesson 02). The model runs on whatever device its Kernels table drives;
 * every buffer below is in that device's memory.
 *
 * A batch goes through the model in one of two ways. Step by step: mlp_load_batch,
 * mlp_forward, mlp_loss, mlp_backward, mlp_update, one kernel after another (lesson 04 needs
 * this, to announce gradients in the middle of the backward pass). Or whole: mlp_batch_loss,
 * mlp_batch_gradients, mlp_train_step, which on a GPU run as mlp_use_kernels chose: the same
 * kernels one by one (unfused), replayed as a CUDA graph, or as one fused kernel
 * (common/fast_step.h). On the CPU, and unfused, they are the step-by-step calls.
 *
 * Shapes: B batch rows (at most max_batch), H hidden features.
 * APIs: MLP_TENSORS, mlp_num_params, mlp_tensor_sizes, mlp_create, mlp_init_params, mlp_load_batch,
 *       mlp_forward, mlp_loss, mlp_backward, mlp_backward_announcing, GradsReady, mlp_update,
 *       mlp_update_from, mlp_take_loss, mlp_predict,
 *       mlp_get_params, mlp_get_state, mlp_set_state, mlp_print_summary, mlp_free,
 *       MlpKernels, MlpBatch, mlp_kernels_name, mlp_kernels_check, mlp_kernels_choose,
 *       mlp_kernels_describe, mlp_gpu_shared_bytes,
 *       mlp_use_kernels, mlp_batch_loss, mlp_batch_gradients, mlp_train_step.
 */
#ifndef MLP_H
#define MLP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    float* w1;       // (H, 1)
    float* b1;       // (H)
    float* w2;       // (H, H)
    float* b2;       // (H)
    float* ln_gamma; // (H)
    float* ln_beta;  // (H)
    float* w3;       // (1, H)
    float* b3;       // (1)
} MlpTensors;

typedef enum { OPTIMIZER_ADAM, OPTIMIZER_SGD } OptimizerKind;

typedef struct {
    OptimizerKind kind;
    float learning_rate;
    float momentum; // SGD only
    int step;       // updates done so far
} Optimizer;

// How a GPU runs a whole batch (--kernels; lesson 01's README says what each costs).
typedef enum {
    MLP_KERNELS_AUTO,    // the fastest that fits: fused where the model fits, else graph
    MLP_KERNELS_UNFUSED, // one launch per kernel (and on the CPU, the CPU's functions)
    MLP_KERNELS_GRAPH,   // the kernels of a batch captured once as a CUDA graph, replayed
    MLP_KERNELS_FUSED,   // one kernel per batch, weights and activations in shared memory
} MlpKernels;

// One batch of a pass over data: its samples are indices[first, first + B).
typedef struct {
    const float* data_x; // every sample's input, in the model's device memory
    const float* data_y; // and target
    const int* indices;  // the pass's order of the samples, in device memory
    int first;
    int B;
    float loss_scale; // the loss sum grows by loss_scale * the batch's squared errors
} MlpBatch;

struct FastStep;

typedef struct {
    const Kernels* k; // the device
    int hidden;       // H
    int max_batch;
    int num_params;

    float* params; // (num_params) viewed through p
    float* grads;  // (num_params) viewed through g, laid out as params
    float* opt_m;  // (num_params) Adam's first moment, or SGD's velocity
    float* opt_v;  // (num_params) Adam's second moment
    MlpTensors p, g;

    // activations of the last forward pass, kept for the backward pass
    float* x;       // (B) input
    float* y;       // (B) target
    float* h1;      // (B, H) first linear
    float* a1;      // (B, H) its ReLU
    float* h2;      // (B, H) second linear
    float* ln;      // (B, H) LayerNorm
    float* ln_mean; // (B)
    float* ln_rstd; // (B)
    float* a3;      // (B, H) its ReLU
    float* out;     // (B) prediction
    // gradients of the activations
    float* d_out; // (B)
    float* d_a3;  // (B, H)
    float* d_ln;  // (B, H)
    float* d_h2;  // (B, H)
    float* d_a1;  // (B, H)
    float* d_h1;  // (B, H)
    float* loss;  // (1) running sum that mlp_loss adds to

    MlpKernels kernels;    // how the batch functions run: unfused, graph or fused
    struct FastStep* fast; // the graph's or fused kernel's state (fast_step.h); NULL when unfused
} Mlp;

// The model's tensors, in the order they lie in the parameter (and gradient) buffer:
// w1, b1, w2, b2, ln_gamma, ln_beta, w3, b3, the order of nn.Sequential's parameters().
#define MLP_TENSORS 8
int mlp_num_params(int hidden);
// sizes (MLP_TENSORS) = each tensor's number of floats, in buffer order.
void mlp_tensor_sizes(int hidden, int* sizes);
// Allocates everything on the device of k. Returns 0 or -1.
int mlp_create(Mlp* m, const Kernels* k, int hidden, int max_batch);
void mlp_free(Mlp* m);
// PyTorch's default initialisation, drawn from (seed): the same on every device and rank.
int mlp_init_params(Mlp* m, uint64_t seed);

// x, y = the samples of data_x, data_y at indices (B); all three in device memory.
int mlp_load_batch(Mlp* m, const float* data_x, const float* data_y, const int* indices, int B);
int mlp_forward(Mlp* m, int B);
// loss += scale * sum of squared errors of the last forward pass.
int mlp_loss(Mlp* m, float scale, int B);
// grads = d(mean squared error of the last forward pass) / d(params).
int mlp_backward(Mlp* m, int B);

// Called by mlp_backward_announcing each time a layer's gradients are final: those of
// params [ready_from, num_params) are (the pass goes from the last layer to the first,
// so the part that is ready grows from the end of the buffer towards its start). Work
// on that part may start at once; on a GPU, after the work queued so far. 0 or -1.
typedef int (*GradsReady)(void* ctx, int ready_from);
// mlp_backward that says, as it goes, which gradients are ready (lesson 04's buckets).
int mlp_backward_announcing(Mlp* m, int B, GradsReady ready, void* ctx);
int mlp_update(Mlp* m, Optimizer* opt);
// mlp_update with other gradients than m->grads (laid out alike): lesson 04's sum of
// accumulated micro-batches.
int mlp_update_from(Mlp* m, Optimizer* opt, const float* grads);
// Copies the loss sum to the host and resets it to 0.
int mlp_take_loss(Mlp* m, float* host_loss);
// out (n) = the model's predictions at x (n), both in host memory, in forward passes of
// at most max_batch rows (the last pass's activations are overwritten). 0 or -1.
int mlp_predict(Mlp* m, float* out, const float* x, int n);
int mlp_get_params(const Mlp* m, float* host_params);
// What a checkpoint holds, in host memory: params, opt_m and opt_v (num_params each).
int mlp_get_state(const Mlp* m, float* params, float* opt_m, float* opt_v);
int mlp_set_state(Mlp* m, const float* params, const float* opt_m, const float* opt_v);
// Prints the layers and "Total parameters: N", as the original app does.
void mlp_print_summary(const Mlp* m);

// "auto", "unfused", "graph" or "fused".
const char* mlp_kernels_name(MlpKernels kernels);
// Refuses (-1, with why) what the CPU cannot do: --kernels graph or fused when not on_gpu.
int mlp_kernels_check(MlpKernels request, bool on_gpu, char* why, size_t why_len);
// The kernels to run a model of hidden, max_batch with, as asked for by request: on a GPU
// (on_gpu) with shared_bytes of shared memory per block, auto is fused where the model fits
// (fast_step.h's fused_shared_bytes) and graph elsewhere; on the CPU, auto and unfused are
// the CPU's functions (*chosen = unfused), graph and fused are refused. Refuses fused where
// the model does not fit. Returns 0, or -1 with a one-line reason in why.
int mlp_kernels_choose(MlpKernels request, bool on_gpu, size_t shared_bytes, int hidden,
                       int max_batch, MlpKernels* chosen, char* why, size_t why_len);
// What a banner says of them: "cpu" off a GPU, else chosen's name, and with request auto why:
// "fused (auto: the model fits one block's shared memory)".
void mlp_kernels_describe(MlpKernels request, MlpKernels chosen, bool on_gpu, char* out,
                          size_t out_len);
// The shared memory one block may have on the current GPU; 0 in a build without CUDA.
size_t mlp_gpu_shared_bytes(void);
// Makes the batch functions below run as kernels says (not auto: mlp_kernels_choose first),
// once, after mlp_create (which starts unfused). Graph and fused need the model on a GPU.
// Returns 0, or -1 after reporting why not.
int mlp_use_kernels(Mlp* m, MlpKernels kernels);

// The batch's forward pass and loss (mlp_load_batch, mlp_forward, mlp_loss).
int mlp_batch_loss(Mlp* m, const MlpBatch* b);
// ... and its backward pass: the gradients in m->grads (mlp_backward).
int mlp_batch_gradients(Mlp* m, const MlpBatch* b);
// ... and the optimizer's step (mlp_update). As a graph or fused, all of it is one launch.
// After a graph or a fused batch, the activation buffers (h1 ... d_h1) hold nothing
// useful: the fused kernel keeps them in shared memory.
int mlp_train_step(Mlp* m, Optimizer* opt, const MlpBatch* b);

#ifdef __cplusplus
}
#endif

#endif
