/*
 * fast_step_cuda.cu - a batch as one CUDA graph, or as one fused kernel (see fast_step.h).
 *
 * The graph replays the kernels of kernels_cuda.cu as mlp.c launches them (Adam's with its
 * step read from device memory); the fused kernel runs the same sums in one block
 * (fused_batch.cuh). Neither uses atomics: every run gives the same bits.
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
#include "fused_batch.cuh"
#include "kernels_cuda.cuh"
#include "trace.h"

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
    // No spans inside (--trace, --phases): their events would be captured, not recorded
    // on each replay. A graph's (or the fused kernel's) step is one span, around it (mlp.c).
    bool tracing = trace_active;
    trace_active = false;
    int recorded = graph_record(m, key, cursor, step);
    trace_active = tracing;
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
// the fused kernel: a whole batch in one block (fused_batch.cuh)

__global__ void __launch_bounds__(FUSED_THREADS) fused_batch_kernel(FusedArgs a) {
    extern __shared__ float shared[];
    fused_batch(&a, shared);
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
