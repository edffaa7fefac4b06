/*
 * fast_step_cuda.cu - a batch as one CUDA graph, or as one fused kernel (see fast_step.h).
 *
 * The graph replays the kernels of kernels_cuda.cu as mlp.c launches them (Adam's with its
 * step read from device memory); the fused kernel runs the same sums in one block, each
 * phase a loop of its threads over the outputs (one output per thread at a time, its terms
 * added one after another as the CPU reference reads), the phases separated by
 * __syncthreads. Rows of LayerNorm and of the last layer go to warps (kernels_cuda.cuh).
 * Every output has one writer, so there are no atomics and every run gives the same bits.
 *
 * Shapes: B batch rows, H hidden features, P parameters.
 * APIs: from CUDA: cudaStreamBeginCapture, cudaStreamEndCapture, cudaGraphInstantiate,
 *       cudaGraphLaunch, cudaFuncSetAttribute, extern __shared__, __launch_bounds__.
 */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "device.h"
#include "fast_step.h"
#include "kernels_cuda.cuh"

#define FUSED_WARPS (FUSED_THREADS / WARP_SIZE)
// Graphs kept at once: a training step, the epoch's last (shorter) one, and eval's two.
#define GRAPH_SLOTS 4

// ----------------------------------------------------------------------------
// the graph: a batch's kernels, captured once and replayed

// What a graph was captured for: the batches, and the update, that it serves.
typedef struct {
    FastPass pass;
    const float* data_x;
    const float* data_y;
    const int* indices;
    int B;
    float loss_scale;
    FastUpdate update; // FAST_STEP's, its adam.step left 0: the graph reads the step counter
} GraphKey;

typedef struct {
    cudaGraphExec_t exec; // NULL: the slot is free
    GraphKey key;
    int next_first; // what its cursor holds after the replays so far; -1 before the first
} GraphSlot;

struct FastStep {
    MlpKernels kernels;
    int* counters; // (GRAPH_SLOTS + 1) device memory: each slot's cursor, where its next
                   // batch starts; then Adam's step counter
    int next_step; // what the step counter holds after the work queued so far; -1: unknown
    GraphSlot slots[GRAPH_SLOTS];
    int next_victim; // the slot to capture anew when none fits and none is free
};

// gather_batch_kernel, the batch's start read from *cursor: a graph's arguments are fixed.
__global__ void gather_batch_at_kernel(float* x, float* y, const float* data_x, const float* data_y,
                                       const int* indices, const int* cursor, int B) {
    long long b = thread_index();
    if (b >= B)
        return;
    const int* batch = indices + *cursor;
    x[b] = data_x[batch[b]];
    y[b] = data_y[batch[b]];
}

// adam_update_kernel with the step read from *step, and so its bias corrections computed
// here, on the device (whose powf may differ from the host's in the last bit).
__global__ void adam_update_at_kernel(float* __restrict__ params, float* __restrict__ m,
                                      float* __restrict__ v, const float* __restrict__ grads,
                                      AdamSettings s, const int* step, int N) {
    long long i = thread_index();
    if (i >= N)
        return;
    float step_size, eps;
    s.step = *step;
    adam_scalars(s, &step_size, &eps);
    adam_element(params, m, v, grads, s.beta1, s.beta2, step_size, eps, i);
}

__global__ void set_counter_kernel(int* counter, int value) {
    *counter = value;
}

// The graph's last node: the next replay takes the next batch (and the next step).
__global__ void advance_kernel(int* cursor, int B, int* step) {
    *cursor += B;
    if (step != NULL)
        *step += 1;
}

// The optimizer's update of key->update, as mlp_update does it, its step read from step.
static int graph_record_update(Mlp* m, const GraphKey* key, const int* step) {
    const FastUpdate* u = &key->update;
    if (u->kind == OPTIMIZER_SGD)
        return m->k->sgd_update(m->params, m->opt_m, m->grads, u->adam.learning_rate, u->momentum,
                                m->num_params);
    adam_update_at_kernel<<<blocks_for(m->num_params), BLOCK_SIZE, 0, device_stream()>>>(
        m->params, m->opt_m, m->opt_v, m->grads, u->adam, step, m->num_params);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// Queues the batch's kernels on the model's stream (being captured): as mlp.c's batch
// functions, with the gather reading cursor (and Adam the step counter).
static int graph_record(Mlp* m, const GraphKey* key, int* cursor, int* step) {
    cudaStream_t stream = device_stream();
    int B = key->B;
    if (B > 0) { // (an empty batch launches nothing, as kernels_cuda.cu's launchers do)
        gather_batch_at_kernel<<<blocks_for(B), BLOCK_SIZE, 0, stream>>>(
            m->x, m->y, key->data_x, key->data_y, key->indices, cursor, B);
        CUDA_CHECK(cudaGetLastError());
    }
    RETURN_IF_FAILED(mlp_forward(m, B));
    RETURN_IF_FAILED(mlp_loss(m, key->loss_scale, B));
    if (key->pass != FAST_LOSS)
        RETURN_IF_FAILED(mlp_backward(m, B));
    if (key->pass == FAST_STEP)
        RETURN_IF_FAILED(graph_record_update(m, key, step));
    advance_kernel<<<1, 1, 0, stream>>>(cursor, B, key->pass == FAST_STEP ? step : NULL);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// Captures the batches of key into slot g (free), whose cursor is cursor.
static int graph_capture(GraphSlot* g, Mlp* m, const GraphKey* key, int* cursor, int* step) {
    cudaStream_t stream = device_stream();
    // Thread-local: another thread's CUDA calls (lesson 04's, NCCL's) do not spoil it.
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    int recorded = graph_record(m, key, cursor, step);
    cudaGraph_t graph = NULL;
    cudaError_t err = cudaStreamEndCapture(stream, &graph); // always: the stream must leave capture
    if (err == cudaSuccess && recorded == 0)
        err = cudaGraphInstantiate(&g->exec, graph, 0);
    if (graph != NULL)
        cudaGraphDestroy(graph); // the instance keeps what it needs
    if (err != cudaSuccess) {
        check_report(__FILE__, __LINE__, "graph_capture", cudaGetErrorString(err));
        g->exec = NULL;
    }
    if (err != cudaSuccess || recorded != 0)
        return -1;
    g->key = *key;
    g->next_first = -1;
    return 0;
}

static bool same_update(const FastUpdate* a, const FastUpdate* b) {
    return a->kind == b->kind && a->adam.learning_rate == b->adam.learning_rate &&
           a->adam.beta1 == b->adam.beta1 && a->adam.beta2 == b->adam.beta2 &&
           a->adam.eps == b->adam.eps && a->momentum == b->momentum;
}

static bool graph_serves(const GraphSlot* g, const GraphKey* k) {
    const GraphKey* h = &g->key;
    return g->exec != NULL && h->pass == k->pass && h->data_x == k->data_x &&
           h->data_y == k->data_y && h->indices == k->indices && h->B == k->B &&
           h->loss_scale == k->loss_scale &&
           (k->pass != FAST_STEP || same_update(&h->update, &k->update));
}

// The slot whose graph serves key, captured now if none does yet; NULL after an error.
static GraphSlot* graph_for(FastStep* fs, Mlp* m, const GraphKey* key) {
    for (int i = 0; i < GRAPH_SLOTS; i++)
        if (graph_serves(&fs->slots[i], key))
            return &fs->slots[i];
    int slot = -1;
    for (int i = 0; i < GRAPH_SLOTS && slot < 0; i++)
        if (fs->slots[i].exec == NULL)
            slot = i;
    if (slot < 0) { // all taken: the oldest capture goes
        slot = fs->next_victim;
        fs->next_victim = (slot + 1) % GRAPH_SLOTS;
        cudaGraphExecDestroy(fs->slots[slot].exec);
        fs->slots[slot].exec = NULL;
    }
    int* step = fs->counters + GRAPH_SLOTS;
    if (graph_capture(&fs->slots[slot], m, key, fs->counters + slot, step) != 0)
        return NULL;
    return &fs->slots[slot];
}

// Queues counter = value unless *known says it holds that already.
static int set_counter(int* counter, int* known, int value) {
    if (*known != value) {
        set_counter_kernel<<<1, 1, 0, device_stream()>>>(counter, value);
        CUDA_CHECK(cudaGetLastError());
        *known = value;
    }
    return 0;
}

// One replay for batch b (and update u, for FAST_STEP); the cursor and the step counter are
// set only where they do not follow from the replays before.
static int graph_run(FastStep* fs, Mlp* m, const MlpBatch* b, FastPass pass, const FastUpdate* u) {
    GraphKey key = {pass, b->data_x, b->data_y, b->indices, b->B, b->loss_scale, {}};
    if (pass == FAST_STEP) {
        key.update = *u;
        key.update.adam.step = 0;
    }
    GraphSlot* g = graph_for(fs, m, &key);
    if (g == NULL)
        return -1;
    RETURN_IF_FAILED(set_counter(fs->counters + (g - fs->slots), &g->next_first, b->first));
    if (pass == FAST_STEP)
        RETURN_IF_FAILED(set_counter(fs->counters + GRAPH_SLOTS, &fs->next_step, u->adam.step));
    CUDA_CHECK(cudaGraphLaunch(g->exec, device_stream()));
    g->next_first += b->B;
    fs->next_step += pass == FAST_STEP;
    return 0;
}

// ----------------------------------------------------------------------------
// the fused kernel: a whole batch in one block

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

// A whole batch: one block of FUSED_THREADS, fused_shared_bytes(H, B) of shared memory.
__global__ void __launch_bounds__(FUSED_THREADS) fused_batch_kernel(FusedArgs a) {
    extern __shared__ float shared[];
    FusedShared s = fused_layout(shared, a.H, a.B);
    fused_load(&s, &a);
    fused_forward(&s, a.B, a.H);
    fused_loss(&s, &a);
    if (a.pass == FAST_LOSS)
        return;
    fused_backward_last(&s, &a);
    fused_backward_layernorm(&s, &a);
    fused_backward_hidden(&s, &a);
    fused_backward_first(&s, &a);
    if (a.pass == FAST_STEP)
        fused_update(&a);
}

static int fused_run(Mlp* m, const MlpBatch* b, FastPass pass, const FastUpdate* u) {
    FusedArgs a;
    memset(&a, 0, sizeof a);
    a.params = m->params, a.grads = m->grads, a.opt_m = m->opt_m, a.opt_v = m->opt_v;
    a.data_x = b->data_x, a.data_y = b->data_y, a.indices = b->indices + b->first;
    a.loss = m->loss, a.loss_scale = b->loss_scale;
    a.B = b->B, a.H = m->hidden, a.P = m->num_params, a.pass = pass;
    if (u != NULL) {
        a.optimizer = u->kind;
        a.beta1 = u->adam.beta1, a.beta2 = u->adam.beta2;
        adam_scalars(u->adam, &a.step_size, &a.eps);
        a.learning_rate = u->adam.learning_rate, a.momentum = u->momentum;
    }
    size_t bytes = fused_shared_bytes(m->hidden, b->B);
    fused_batch_kernel<<<1, FUSED_THREADS, bytes, device_stream()>>>(a);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// ----------------------------------------------------------------------------
// the module's functions

size_t fast_step_shared_limit(void) {
    int device = 0, bytes = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess)
        err = cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err != cudaSuccess) {
        check_report(__FILE__, __LINE__, "cudaDeviceGetAttribute", cudaGetErrorString(err));
        return 0;
    }
    return (size_t)bytes;
}

// Checks that the model's batches fit the fused kernel's one block, and allows the kernel
// all the shared memory the GPU gives a block (so that models of several sizes can share it).
static int fused_prepare(const Mlp* m) {
    MlpKernels chosen;
    char why[ERROR_TEXT_BYTES];
    size_t limit = fast_step_shared_limit();
    if (mlp_kernels_choose(MLP_KERNELS_FUSED, true, limit, m->hidden, m->max_batch, &chosen, why,
                           sizeof why) != 0) {
        rank_log("error: %s", why);
        return -1;
    }
    CUDA_CHECK(cudaFuncSetAttribute(fused_batch_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)limit));
    return 0;
}

int fast_step_create(FastStep** out, const Mlp* m, MlpKernels kernels) {
    *out = NULL;
    if (kernels == MLP_KERNELS_FUSED && fused_prepare(m) != 0)
        return -1;
    FastStep* fs = (FastStep*)calloc(1, sizeof *fs);
    if (fs == NULL) {
        check_report(__FILE__, __LINE__, "calloc", "out of memory");
        return -1;
    }
    fs->counters = (int*)kernels_cuda.alloc((GRAPH_SLOTS + 1) * sizeof(int)); // (reports)
    if (fs->counters == NULL) {
        free(fs);
        return -1;
    }
    fs->kernels = kernels;
    fs->next_step = -1;
    *out = fs;
    return 0;
}

int fast_step_run(FastStep* fs, Mlp* m, const MlpBatch* b, FastPass pass,
                  const FastUpdate* update) {
    if (fs->kernels == MLP_KERNELS_FUSED)
        return fused_run(m, b, pass, update);
    return graph_run(fs, m, b, pass, update);
}

void fast_step_free(FastStep* fs) {
    for (int i = 0; i < GRAPH_SLOTS; i++)
        if (fs->slots[i].exec != NULL)
            cudaGraphExecDestroy(fs->slots[i].exec);
    kernels_cuda.release(fs->counters);
    free(fs);
}
