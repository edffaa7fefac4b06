/*
 * kernels_cuda.cuh - what the CUDA kernels (kernels_cuda.cu) and the fused step
 * (fast_step_cuda.cu) compute alike: launch sizes, the linear layer's tile, the warp's fixed-order sum, a LayerNorm row by one warp,
 * and one optimizer update of one parameter.
 *
 * Each of these is the body of a loop of a CPU twin in kernels_cpu.c, and keeps its comments;
 * both files use the same ones, so that the fused kernel computes what the separate kernels do.
 *
 * Shapes: C features of a row, N elements.
 * APIs: BLOCK_SIZE, WARP_SIZE, LINEAR_TILE, blocks_for, thread_index, linear_forward_tile,
 *       warp_sum, layernorm_row,
 *       layernorm_backward_row, layernorm_dparams_column, adam_scalars, adam_element,
 *       sgd_element.
 */
#ifndef KERNELS_CUDA_CUH
#define KERNELS_CUDA_CUH

#include <cuda_runtime.h>
#include <math.h>

#include "kernels.h"

// Threads per block of every elementwise launch: a multiple of the 32-thread warp.
#define BLOCK_SIZE 256
#define WARP_SIZE 32

// Enough blocks of BLOCK_SIZE threads for n threads (n > 0). In 64 bits: n may be B x H,
// up to INT_MAX, where n + BLOCK_SIZE - 1 would overflow an int.
static inline unsigned blocks_for(long long n) {
    return (unsigned)((n + BLOCK_SIZE - 1) / BLOCK_SIZE);
}

// This thread's position in the whole grid: the index of its work item. In 64 bits: the
// last block of a launch for INT_MAX items reaches past INT_MAX.
static __device__ long long thread_index(void) {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

// The forward pass's tiles: LINEAR_TILE x LINEAR_TILE outputs per block, one per thread.
#define LINEAR_TILE 16

// linear_forward's work for thread (tx, ty) of block (bx, by), every thread of the block
// calling it. One thread per output element (b, o), a block per tile of them: b along the
// block's rows (ty), o along its columns (tx). The block stages LINEAR_TILE columns of its
// rows of inp and of w in shared memory at a time, each thread loading one element of each,
// neighbouring threads neighbouring elements (coalesced reads: a row of the tile is one
// transaction); then every thread runs over the staged columns. Each output still adds its
// terms one after another in i order.
static __device__ void linear_forward_tile(float* out, const float* inp, const float* w,
                                           const float* bias, int B, int C, int OC, int tx, int ty,
                                           int bx, int by) {
    // padded by one column, so that a warp reading down a column hits 16 different banks
    __shared__ float inp_tile[LINEAR_TILE][LINEAR_TILE + 1]; // (b, i) of this block's rows
    __shared__ float w_tile[LINEAR_TILE][LINEAR_TILE + 1];   // (o, i) of this block's columns
    long long b = (long long)bx * LINEAR_TILE + ty;          // this thread's output row
    int o = by * LINEAR_TILE + tx;                           // and column
    int w_row = by * LINEAR_TILE + ty;                       // the row of w that it loads
    // sum over i < C of inp[b][i] * w[o][i]
    float sum = 0.0f;
    for (int i0 = 0; i0 < C; i0 += LINEAR_TILE) {
        int i = i0 + tx;
        inp_tile[ty][tx] = b < B && i < C ? inp[b * C + i] : 0.0f;
        w_tile[ty][tx] = w_row < OC && i < C ? w[(size_t)w_row * C + i] : 0.0f;
        __syncthreads();
        int n = C - i0 < LINEAR_TILE ? C - i0 : LINEAR_TILE;
        for (int k = 0; k < n; k++)
            sum += inp_tile[ty][k] * w_tile[tx][k];
        __syncthreads();
    }
    if (b < B && o < OC)
        out[b * OC + o] = bias[o] + sum;
}

// The sum of v over the 32 lanes of a warp, in a fixed order: a butterfly of shuffles,
// where at each level a lane adds its partner's value (a + b and b + a are the same bits).
// Every lane gets the same result, on every run: no atomics, no order left to chance.
static __device__ float warp_sum(float v) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2)
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// LayerNorm of one row x (C) by the 32 lanes of a warp (all of them call it, lane is theirs):
// out (C) = (x - mean) * rstd * gamma + beta; returns mean and rstd in every lane. Each lane
// sums every 32nd element, then warp_sum adds the 32 partial sums (the CPU twin keeps one
// partial sum per vector lane in the same way).
static __device__ void layernorm_row(float* out, float* mean_out, float* rstd_out, const float* x,
                                     const float* gamma, const float* beta, int C, int lane) {
    float sum = 0.0f;
    for (int i = lane; i < C; i += WARP_SIZE)
        sum += x[i];
    float m = warp_sum(sum) / C;
    // the variance from the centred values: (x - m)^2, not x^2 - m^2, which cancels
    float sum_sq = 0.0f;
    for (int i = lane; i < C; i += WARP_SIZE)
        sum_sq += (x[i] - m) * (x[i] - m);
    float s = 1.0f / sqrtf(warp_sum(sum_sq) / C + LAYERNORM_EPS);
    for (int i = lane; i < C; i += WARP_SIZE)
        out[i] = (x[i] - m) * s * gamma[i] + beta[i];
    *mean_out = m;
    *rstd_out = s;
}

// dinp (C) of one row by the 32 lanes of a warp, from dout d (C), the row x (C) and the
// forward's mean and rstd of it.
static __device__ void layernorm_backward_row(float* dinp, const float* d, const float* x,
                                              float mean, float rstd, const float* gamma, int C,
                                              int lane) {
    // Two row sums: of dnorm = dout * gamma, and of dnorm * norm.
    float sum_dnorm = 0.0f, sum_dnorm_norm = 0.0f;
    for (int i = lane; i < C; i += WARP_SIZE) {
        float norm = (x[i] - mean) * rstd;
        float dnorm = d[i] * gamma[i];
        sum_dnorm += dnorm;
        sum_dnorm_norm += dnorm * norm;
    }
    float mean_dnorm = warp_sum(sum_dnorm) / C, mean_dnorm_norm = warp_sum(sum_dnorm_norm) / C;
    for (int i = lane; i < C; i += WARP_SIZE) {
        float norm = (x[i] - mean) * rstd;
        float dnorm = d[i] * gamma[i];
        // the mean and the variance depend on every input of the row
        dinp[i] = (dnorm - mean_dnorm - norm * mean_dnorm_norm) * rstd;
    }
}

// dgamma[i] and dbeta[i] of feature i: sums over the B rows of dout (B, C), in row order as
// the CPU twin adds them, with inp (B, C) and the forward's mean, rstd (B).
static __device__ void layernorm_dparams_column(float* dgamma, float* dbeta, const float* dout,
                                                const float* inp, const float* mean,
                                                const float* rstd, int i, int B, int C) {
    float sum_dgamma = 0.0f, sum_dbeta = 0.0f;
    for (int b = 0; b < B; b++) {
        float norm = (inp[(size_t)b * C + i] - mean[b]) * rstd[b];
        float d = dout[(size_t)b * C + i];
        sum_dgamma += d * norm;
        sum_dbeta += d;
    }
    *dgamma = sum_dgamma;
    *dbeta = sum_dbeta;
}

// torch.optim.Adam: p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), with the bias
// corrections bc = 1 - beta^step. Multiplying through by sqrt(bc2) leaves one
// square root and one division per element.
// (computed once per step, on the host, exactly as the CPU twin computes them; a graph
// computes them on the device, from a step counter there)
static inline __host__ __device__ void adam_scalars(AdamSettings s, float* step_size, float* eps) {
    float bc1 = 1.0f - powf(s.beta1, (float)s.step);
    float bc2_sqrt = sqrtf(1.0f - powf(s.beta2, (float)s.step));
    *step_size = s.learning_rate / bc1 * bc2_sqrt;
    *eps = s.eps * bc2_sqrt;
}

// Adam on parameter i, with adam_scalars' step_size and eps.
static __device__ void adam_element(float* params, float* m, float* v, const float* grads,
                                    float beta1, float beta2, float step_size, float eps,
                                    long long i) {
    m[i] = beta1 * m[i] + (1.0f - beta1) * grads[i];
    v[i] = beta2 * v[i] + (1.0f - beta2) * grads[i] * grads[i];
    params[i] -= step_size * m[i] / (sqrtf(v[i]) + eps);
}

// SGD with momentum on parameter i.
static __device__ void sgd_element(float* params, float* velocity, const float* grads,
                                   float learning_rate, float momentum, long long i) {
    velocity[i] = momentum * velocity[i] + grads[i];
    params[i] -= learning_rate * velocity[i];
}

#endif
