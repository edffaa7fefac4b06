/*
 * mlp.h - the model: Linear(1,H) -> ReLU -> Linear(H,H) -> LayerNorm(H) -> ReLU -> Linear(H,1).
 *
 * All parameters live in one contiguous buffer and all gradients in another,
 * laid out alike, so that one all-reduce averages every gradient at once
 * (lesson 02). The model runs on whatever device its Kernels table drives;
 * every buffer below is in that device's memory.
 *
 * Shapes: B batch rows (at most max_batch), H hidden features.
 * APIs: mlp_num_params, mlp_create, mlp_init_params, mlp_load_batch,
 *       mlp_forward, mlp_loss, mlp_backward, mlp_update, mlp_take_loss,
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

int mlp_num_params(int hidden);
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
int mlp_update(Mlp* m, Optimizer* opt);
// Copies the loss sum to the host and resets it to 0.
int mlp_take_loss(Mlp* m, float* host_loss);
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
