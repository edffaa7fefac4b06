/*
 * kernels.h - every computation of the model, behind one table of functions.
 *
 * A Kernels table is a device: the CPU table (kernels_cpu.c) is the plain-C
 * specification, the CUDA table (kernels_cuda.cu) runs the same operations as
 * GPU kernels. Both take the same arguments, in the order outputs, inputs,
 * parameters, sizes, and return 0 on success or -1 after reporting an error.
 * Pointers are in the device's memory: get it with alloc, fill it with upload.
 * The CPU tables compute with subnormal floats flushed to zero: their alloc sets
 * that mode for the calling thread (kernels_cpu.c says why).
 *
 * Shapes: B batch rows, C input features, OC output features, N elements.
 * Every gradient function overwrites its outputs (no accumulation).
 *
 * APIs: Kernels, kernels_cpu, kernels_cpu_naive, kernels_cuda (only in builds with CUDA).
 */
#ifndef KERNELS_H
#define KERNELS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LAYERNORM_EPS 1e-5f

typedef struct {
    float learning_rate;
    float beta1; // decay of the running mean of gradients
    float beta2; // decay of the running mean of squared gradients
    float eps;   // keeps the division finite
    int step;    // 1 on the first update; drives the bias correction
} AdamSettings;

typedef struct {
    const char* name;

    // Memory on the device. alloc returns NULL after reporting a failure.
    void* (*alloc)(size_t bytes);
    void (*release)(void* ptr);
    int (*upload)(void* device_dst, const void* host_src, size_t bytes);
    int (*download)(void* host_dst, const void* device_src, size_t bytes);
    int (*zero)(void* ptr, size_t bytes);
    // Waits for all queued work; reports errors of asynchronous kernels.
    int (*synchronize)(void);

    // x, y (B) = data_x, data_y at indices (B)
    int (*gather_batch)(float* x, float* y, const float* data_x, const float* data_y,
                        const int* indices, int B);
    // out (B, OC) = inp (B, C) @ w (OC, C)^T + bias (OC)
    int (*linear_forward)(float* out, const float* inp, const float* w, const float* bias, int B,
                          int C, int OC);
    // dinp (B, C) (skipped when NULL), dw (OC, C) and dbias (OC) (both skipped when dw is
    // NULL) from dout (B, OC). Each gradient is computed alone, so that one call or two
    // (the parameters' first, then the input's: lesson 04) give the same bits.
    int (*linear_backward)(float* dinp, float* dw, float* dbias, const float* dout,
                           const float* inp, const float* w, int B, int C, int OC);
    // out (N) = max(inp, 0)
    int (*relu_forward)(float* out, const float* inp, int N);
    // dinp (N) = dout where the ReLU's output is positive, else 0
    int (*relu_backward)(float* dinp, const float* dout, const float* out, int N);
    // out (B, C) = (inp - mean) * rstd * gamma (C) + beta (C); keeps mean, rstd (B)
    int (*layernorm_forward)(float* out, float* mean, float* rstd, const float* inp,
                             const float* gamma, const float* beta, int B, int C);
    // dinp (B, C), dgamma (C), dbeta (C) from dout (B, C) and the forward's saved values
    int (*layernorm_backward)(float* dinp, float* dgamma, float* dbeta, const float* dout,
                              const float* inp, const float* mean, const float* rstd,
                              const float* gamma, int B, int C);
    // loss (1) += scale * sum over B of (pred - target)^2
    int (*mse_forward)(float* loss, const float* pred, const float* target, float scale, int B);
    // dpred (B) = 2 (pred - target) / B: the gradient of the batch mean
    int (*mse_backward)(float* dpred, const float* pred, const float* target, int B);
    // Adam (as torch.optim.Adam without weight decay) on params, m, v (N)
    int (*adam_update)(float* params, float* m, float* v, const float* grads, AdamSettings s,
                       int N);
    // SGD with momentum (as torch.optim.SGD): velocity = momentum * velocity + grad
    int (*sgd_update)(float* params, float* velocity, const float* grads, float learning_rate,
                      float momentum, int N);
    // sum (N) += scale * x (N): gradients of micro-batches accumulated (lesson 04)
    int (*add_scaled)(float* sum, const float* x, float scale, int N);
} Kernels;

extern const Kernels kernels_cpu;
// kernels_cpu with the linear layer written as plain loops, the formulas as they read: the
// specification that the tests hold kernels_cpu's tiled linear layer to. Slow; tests only.
extern const Kernels kernels_cpu_naive;
#ifdef HAVE_CUDA
extern const Kernels kernels_cuda;
#endif

#ifdef __cplusplus
}
#endif

#endif
