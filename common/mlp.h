/*
 * mlp.h - the model: Linear(1,H) -> ReLU -> Linear(H,H) -> LayerNorm(H) -> ReLU -> Linear(H,1).
 *
 * All parameters live in one contiguous buffer and all gradients in another,
 * laid out alike, so that one all-reduce averages every gradient at once
 * (lesson 02). The model runs on whatever device its Kernels table drives;
 * every buffer below is in that device's memory.
 *
 * Shapes: B batch rows (at most max_batch), H hidden features.
 * APIs: MLP_TENSORS, mlp_num_params, mlp_tensor_sizes, mlp_create, mlp_init_params, mlp_load_batch,
 *       mlp_forward, mlp_loss, mlp_backward, mlp_backward_announcing, GradsReady, mlp_update,
 *       mlp_update_from, mlp_take_loss, mlp_predict,
 *       mlp_get_params, mlp_get_state, mlp_set_state, mlp_print_summary, mlp_free.
 */
#ifndef MLP_H
#define MLP_H

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

#ifdef __cplusplus
}
#endif

#endif
