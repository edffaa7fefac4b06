/*
 * fused_batch.cuh - the fused kernel's work (fast_step.h): a whole batch in one block.
 *
 * fast_step_cuda.cu wraps fused_batch in a kernel. Without a GPU, CUDA on the CPU
 * (tests/cuda_on_cpu) runs it, a fiber per CUDA thread, and tests/gpu checks its indexing and
 * its barriers against the CPU twin.
 *
 * Each phase is a loop of the block's threads over one layer's outputs (one output per
 * thread at a time, its terms added one after another as the CPU reference reads); the
 * phases are separated by __syncthreads. Rows of LayerNorm and of the last layer go to
 * warps. Every output has one writer: no atomics, the same bits on every run.
 *
 * Shapes: B batch rows, H hidden features, P parameters.
 * APIs: FUSED_WARPS, FusedArgs, fused_batch.
 */
#ifndef FUSED_BATCH_CUH
#define FUSED_BATCH_CUH

#include "fast_step.h"
#include "kernels_cuda.cuh"

#define FUSED_WARPS (FUSED_THREADS / WARP_SIZE)

// What the kernel is given: the model's buffers (global memory), the batch, the update.
typedef struct {
    float* params; // (P) read at the start, written by the update
    float* grads;  // (P) written by the backward pass
    float* opt_m;  // (P) Adam's first moment, or SGD's velocity
    float* opt_v;  // (P) Adam's second moment
    const float* data_x;
    const float* data_y;
    const int* indices; // (B) the batch's samples
    float* loss;        // (1)
    float loss_scale;
    int B, H, P;
    FastPass pass;
    OptimizerKind optimizer;
    float beta1, beta2, step_size, eps; // adam_scalars' for this step
    float learning_rate, momentum;      // SGD's
} FusedArgs;

// The block's shared memory, laid out as fused_shared_bytes counts it.
typedef struct {
    float* head;                        // (2H) w1, b1, as in params
    float *w1, *b1;                     // (H) each, in head
    float* w2t;                         // (H, H + 1) w2 transposed: w2t[i * (H + 1) + o] = w2[o][i]
    float* tail;                        // (4H + 1) b2, gamma, beta, w3, b3, as in params
    float *b2, *gamma, *beta, *w3, *b3; // in tail
    float *x, *y;                       // (B) the batch
    float *a1, *h2, *a3;                // (B, H) the activations the backward pass needs
    float *mean, *rstd, *out, *d_out;   // (B)
    float *da, *db;                     // (B, H) gradients of activations, two alive at a time
    float* partial;                     // (FUSED_WARPS) one sum per warp
} FusedShared;

static __device__ FusedShared fused_layout(float* shared, int H, int B) {
    FusedShared s;
    float* p = shared;
    s.head = p, s.w1 = p, s.b1 = p + H, p += 2 * H;
    s.w2t = p, p += (size_t)H * (H + 1);
    s.tail = p, s.b2 = p, s.gamma = p + H, s.beta = p + 2 * H, s.w3 = p + 3 * H;
    s.b3 = p + 4 * H, p += 4 * H + 1;
    s.x = p, s.y = p + B, p += 2 * B;
    s.a1 = p, s.h2 = p + B * H, s.a3 = p + 2 * B * H, p += 3 * B * H;
    s.mean = p, s.rstd = p + B, s.out = p + 2 * B, s.d_out = p + 3 * B, p += 4 * B;
    s.da = p, s.db = p + B * H, p += 2 * B * H;
    s.partial = p;
    return s;
}

// sum over k < n of a[k * a_stride] * b[k * b_stride], one term after another
static __device__ float dot(const float* a, int a_stride, const float* b, int b_stride, int n) {
    float sum = 0.0f;
    for (int k = 0; k < n; k++)
        sum += a[k * a_stride] * b[k * b_stride];
    return sum;
}

// sum over k < n of a[k * stride], one term after another
static __device__ float column_sum(const float* a, int stride, int n) {
    float sum = 0.0f;
    for (int k = 0; k < n; k++)
        sum += a[k * stride];
    return sum;
}

static __device__ float relu(float v) {
    return v > 0.0f ? v : 0.0f;
}

// The sum of v over the block's threads, in thread 0: each warp's (warp_sum), then the
// warps' in order. Every thread calls it.
static __device__ float block_sum(float v, float* partial) {
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    v = warp_sum(v);
    if (lane == 0)
        partial[warp] = v;
    __syncthreads();
    v = 0.0f;
    if (warp == 0)
        v = warp_sum(lane < FUSED_WARPS ? partial[lane] : 0.0f);
    return v;
}

// The parameters and the batch into shared memory (global reads along contiguous memory).
static __device__ void fused_load(const FusedShared* s, const FusedArgs* a) {
    int H = a->H, t = threadIdx.x;
    const float* p = a->params;
    for (int i = t; i < 2 * H; i += FUSED_THREADS)
        s->head[i] = p[i];
    for (int i = t; i < 4 * H + 1; i += FUSED_THREADS)
        s->tail[i] = p[2 * H + H * H + i];
    for (int idx = t; idx < H * H; idx += FUSED_THREADS) // idx = o * H + i
        s->w2t[(idx % H) * (H + 1) + idx / H] = p[2 * H + idx];
    for (int b = t; b < a->B; b += FUSED_THREADS) {
        s->x[b] = a->data_x[a->indices[b]];
        s->y[b] = a->data_y[a->indices[b]];
    }
    __syncthreads();
}

// mlp_forward: a1, h2, a3 (LayerNorm then ReLU) and out, a phase per layer.
static __device__ void fused_forward(const FusedShared* s, int B, int H) {
    int t = threadIdx.x, lane = t % WARP_SIZE, warp = t / WARP_SIZE;
    // out[b][o] = bias[o] + sum over i of inp[b][i] * w[o][i], then the ReLU
    for (int idx = t; idx < B * H; idx += FUSED_THREADS) // idx = b * H + o
        s->a1[idx] = relu(s->b1[idx % H] + dot(s->x + idx / H, 1, s->w1 + idx % H, 1, 1));
    __syncthreads();
    for (int idx = t; idx < B * H; idx += FUSED_THREADS)
        s->h2[idx] = s->b2[idx % H] + dot(s->a1 + idx / H * H, 1, s->w2t + idx % H, H + 1, H);
    __syncthreads();
    for (int b = warp; b < B; b += FUSED_WARPS) { // a warp per row
        float m, r;
        layernorm_row(s->a3 + b * H, &m, &r, s->h2 + b * H, s->gamma, s->beta, H, lane);
        for (int i = lane; i < H; i += WARP_SIZE) // the elements this lane wrote
            s->a3[b * H + i] = relu(s->a3[b * H + i]);
        if (lane == 0) {
            s->mean[b] = m;
            s->rstd[b] = r;
        }
    }
    __syncthreads();
    for (int b = warp; b < B; b += FUSED_WARPS) { // the last layer's dot products, by warps
        float sum = 0.0f;
        for (int i = lane; i < H; i += WARP_SIZE)
            sum += s->a3[b * H + i] * s->w3[i];
        sum = warp_sum(sum);
        if (lane == 0)
            s->out[b] = s->b3[0] + sum;
    }
    __syncthreads();
}

// mlp_loss and mse_backward: loss += scale * sum of squared errors; d_out.
static __device__ void fused_loss(const FusedShared* s, const FusedArgs* a) {
    int t = threadIdx.x, B = a->B;
    float share = 0.0f;
    for (int b = t; b < B; b += FUSED_THREADS)
        share += (s->out[b] - s->y[b]) * (s->out[b] - s->y[b]);
    float sum = block_sum(share, s->partial);
    if (t == 0)
        *a->loss += a->loss_scale * sum;
    // dpred (B) = 2 (pred - target) / B: the gradient of the batch mean
    for (int b = t; b < B; b += FUSED_THREADS)
        s->d_out[b] = 2.0f * (s->out[b] - s->y[b]) / B;
    __syncthreads();
}

// The last layer's gradients (dw3, db3) and its input's through the ReLU: da = d_ln.
static __device__ void fused_backward_last(const FusedShared* s, const FusedArgs* a) {
    int t = threadIdx.x, B = a->B, H = a->H;
    float* g_w3 = a->grads + 5 * H + H * H;
    // dw[0][i] = sum over b of dout[b][0] * inp[b][i]; dbias[0] = sum over b of dout[b][0]
    for (int i = t; i < H; i += FUSED_THREADS)
        g_w3[i] = dot(s->d_out, 1, s->a3 + i, H, B);
    if (t == 0)
        g_w3[H] = column_sum(s->d_out, 1, B);
    // dinp[b][i] = dout[b][0] * w[0][i]; dinp = dout where the ReLU's output is positive
    for (int idx = t; idx < B * H; idx += FUSED_THREADS)
        s->da[idx] = s->a3[idx] > 0.0f ? dot(s->d_out + idx / H, 1, s->w3 + idx % H, 1, 1) : 0.0f;
    __syncthreads();
}

// LayerNorm's gradients: dgamma, dbeta (a thread per feature) and db = d_h2 (a warp per row).
static __device__ void fused_backward_layernorm(const FusedShared* s, const FusedArgs* a) {
    int t = threadIdx.x, lane = t % WARP_SIZE, warp = t / WARP_SIZE, B = a->B, H = a->H;
    float* g_gamma = a->grads + 3 * H + H * H;
    for (int i = t; i < H; i += FUSED_THREADS)
        layernorm_dparams_column(g_gamma + i, g_gamma + H + i, s->da, s->h2, s->mean, s->rstd, i, B,
                                 H);
    for (int b = warp; b < B; b += FUSED_WARPS)
        layernorm_backward_row(s->db + b * H, s->da + b * H, s->h2 + b * H, s->mean[b], s->rstd[b],
                               s->gamma, H, lane);
    __syncthreads();
}

// The hidden layer's gradients (dw2, db2) and its input's through the ReLU: da = d_h1.
static __device__ void fused_backward_hidden(const FusedShared* s, const FusedArgs* a) {
    int t = threadIdx.x, B = a->B, H = a->H;
    float* g_w2 = a->grads + 2 * H;
    // dbias[o] = sum over b of dout[b][o]
    for (int o = t; o < H; o += FUSED_THREADS)
        g_w2[H * H + o] = column_sum(s->db + o, H, B);
    // dw[o][i] = sum over b of dout[b][o] * inp[b][i]
    for (int idx = t; idx < H * H; idx += FUSED_THREADS) // idx = o * H + i
        g_w2[idx] = dot(s->db + idx / H, H, s->a1 + idx % H, H, B);
    // dinp[b][i] = sum over o of dout[b][o] * w[o][i], where the ReLU's output is positive
    for (int idx = t; idx < B * H; idx += FUSED_THREADS) // idx = b * H + i
        s->da[idx] = s->a1[idx] > 0.0f
                         ? dot(s->db + idx / H * H, 1, s->w2t + idx % H * (H + 1), 1, H)
                         : 0.0f;
    __syncthreads();
}

// The first layer's gradients, dw1 and db1 (the input needs none).
static __device__ void fused_backward_first(const FusedShared* s, const FusedArgs* a) {
    int t = threadIdx.x, B = a->B, H = a->H;
    // dbias[o] = sum over b of dout[b][o]; dw[o][0] = sum over b of dout[b][o] * inp[b][0]
    for (int o = t; o < H; o += FUSED_THREADS) {
        a->grads[H + o] = column_sum(s->da + o, H, B);
        a->grads[o] = dot(s->da + o, H, s->x, 1, B);
    }
    __syncthreads(); // every gradient written, and seen by every thread of the block
}

// The optimizer's step on every parameter, in global memory (mlp_update).
static __device__ void fused_update(const FusedArgs* a) {
    for (int i = threadIdx.x; i < a->P; i += FUSED_THREADS)
        if (a->optimizer == OPTIMIZER_SGD)
            sgd_element(a->params, a->opt_m, a->grads, a->learning_rate, a->momentum, i);
        else
            adam_element(a->params, a->opt_m, a->opt_v, a->grads, a->beta1, a->beta2, a->step_size,
                         a->eps, i);
}

// A whole batch, by every thread of a block of FUSED_THREADS, in shared (fused_shared_bytes(H,
// B) of shared memory).
static __device__ void fused_batch(const FusedArgs* a, float* shared) {
    FusedShared s = fused_layout(shared, a->H, a->B);
    fused_load(&s, a);
    fused_forward(&s, a->B, a->H);
    fused_loss(&s, a);
    if (a->pass == FAST_LOSS)
        return;
    fused_backward_last(&s, a);
    fused_backward_layernorm(&s, a);
    fused_backward_hidden(&s, a);
    fused_backward_first(&s, a);
    if (a->pass == FAST_STEP)
        fused_update(a);
}

#endif
