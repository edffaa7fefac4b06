/*
 * mlp.c - the model's passes, written once for every device (see mlp.h).
 */
#include "mlp.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "fast_step.h"
#include "rng.h"
#include "trace.h"

#define ADAM_BETA1 0.9f
#define ADAM_BETA2 0.999f
#define ADAM_EPS 1e-8f

// ----------------------------------------------------------------------------
// parameter layout

void mlp_tensor_sizes(int hidden, int* sizes) {
    int H = hidden;
    int in_order[MLP_TENSORS] = {H, H, H * H, H, H, H, H, 1}; // w1 b1 w2 b2 gamma beta w3 b3
    for (int t = 0; t < MLP_TENSORS; t++)
        sizes[t] = in_order[t];
}

int mlp_num_params(int hidden) {
    int sizes[MLP_TENSORS], total = 0;
    mlp_tensor_sizes(hidden, sizes);
    for (int t = 0; t < MLP_TENSORS; t++)
        total += sizes[t];
    return total;
}

// Points t's tensors into the contiguous buffer base, in declaration order.
static void mlp_tensors_view(MlpTensors* t, float* base, int H) {
    t->w1 = base;
    t->b1 = t->w1 + H;
    t->w2 = t->b1 + H;
    t->b2 = t->w2 + H * H;
    t->ln_gamma = t->b2 + H;
    t->ln_beta = t->ln_gamma + H;
    t->w3 = t->ln_beta + H;
    t->b3 = t->w3 + H;
}

// ----------------------------------------------------------------------------
// creation

static int device_alloc(const Kernels* k, float** ptr, size_t count) {
    *ptr = k->alloc(count * sizeof(float));
    return *ptr == NULL ? -1 : 0;
}

int mlp_create(Mlp* m, const Kernels* k, int hidden, int max_batch) {
    *m = (Mlp){.k = k, .hidden = hidden, .max_batch = max_batch, .kernels = MLP_KERNELS_UNFUSED};
    m->num_params = mlp_num_params(hidden);
    size_t P = (size_t)m->num_params, BH = (size_t)max_batch * hidden, B = (size_t)max_batch;
    float** per_param[] = {&m->params, &m->grads, &m->opt_m, &m->opt_v};
    float** per_row_of_h[] = {&m->h1,   &m->a1,   &m->h2,   &m->ln,   &m->a3,
                              &m->d_a3, &m->d_ln, &m->d_h2, &m->d_a1, &m->d_h1};
    float** per_row[] = {&m->x, &m->y, &m->ln_mean, &m->ln_rstd, &m->out, &m->d_out};
    for (size_t i = 0; i < sizeof per_param / sizeof *per_param; i++)
        RETURN_IF_FAILED(device_alloc(k, per_param[i], P));
    for (size_t i = 0; i < sizeof per_row_of_h / sizeof *per_row_of_h; i++)
        RETURN_IF_FAILED(device_alloc(k, per_row_of_h[i], BH));
    for (size_t i = 0; i < sizeof per_row / sizeof *per_row; i++)
        RETURN_IF_FAILED(device_alloc(k, per_row[i], B));
    RETURN_IF_FAILED(device_alloc(k, &m->loss, 1));
    mlp_tensors_view(&m->p, m->params, hidden);
    mlp_tensors_view(&m->g, m->grads, hidden);
    return 0;
}

void mlp_free(Mlp* m) {
#ifdef HAVE_CUDA
    if (m->fast != NULL)
        fast_step_free(m->fast);
#endif
    float* buffers[] = {m->params, m->grads, m->opt_m, m->opt_v,   m->x,       m->y,    m->h1,
                        m->a1,     m->h2,    m->ln,    m->ln_mean, m->ln_rstd, m->a3,   m->out,
                        m->d_out,  m->d_a3,  m->d_ln,  m->d_h2,    m->d_a1,    m->d_h1, m->loss};
    for (size_t i = 0; i < sizeof buffers / sizeof *buffers; i++)
        if (buffers[i] != NULL)
            m->k->release(buffers[i]);
    *m = (Mlp){0};
}

int mlp_init_params(Mlp* m, uint64_t seed) {
    int H = m->hidden;
    float* host = malloc((size_t)m->num_params * sizeof(float));
    if (host == NULL) {
        check_report(__FILE__, __LINE__, "malloc", "out of memory");
        return -1;
    }
    MlpTensors t;
    mlp_tensors_view(&t, host, H);
    // nn.Linear: weights and biases uniform in +-1/sqrt(fan_in); nn.LayerNorm: 1 and 0.
    float bound_in1 = 1.0f, bound_inH = 1.0f / sqrtf((float)H);
    for (int i = 0; i < m->num_params; i++) {
        float* p = host + i;
        float u = (float)rng_uniform(seed, RNG_STREAM_INIT, (uint64_t)i) * 2.0f - 1.0f;
        if (p < t.w2)
            *p = u * bound_in1; // w1, b1: fan_in 1
        else if (p < t.ln_gamma)
            *p = u * bound_inH; // w2, b2: fan_in H
        else if (p < t.ln_beta)
            *p = 1.0f;
        else if (p < t.w3)
            *p = 0.0f;
        else
            *p = u * bound_inH; // w3, b3: fan_in H
    }
    int err = m->k->upload(m->params, host, (size_t)m->num_params * sizeof(float));
    free(host);
    return err;
}

// ----------------------------------------------------------------------------
// the passes

int mlp_load_batch(Mlp* m, const float* data_x, const float* data_y, const int* indices, int B) {
    return m->k->gather_batch(m->x, m->y, data_x, data_y, indices, B);
}

static int forward_pass(Mlp* m, int B) {
    const Kernels* k = m->k;
    int H = m->hidden;
    RETURN_IF_FAILED(k->linear_forward(m->h1, m->x, m->p.w1, m->p.b1, B, 1, H));
    RETURN_IF_FAILED(k->relu_forward(m->a1, m->h1, B * H));
    RETURN_IF_FAILED(k->linear_forward(m->h2, m->a1, m->p.w2, m->p.b2, B, H, H));
    RETURN_IF_FAILED(k->layernorm_forward(m->ln, m->ln_mean, m->ln_rstd, m->h2, m->p.ln_gamma,
                                          m->p.ln_beta, B, H));
    RETURN_IF_FAILED(k->relu_forward(m->a3, m->ln, B * H));
    return k->linear_forward(m->out, m->a3, m->p.w3, m->p.b3, B, H, 1);
}

int mlp_forward(Mlp* m, int B) {
    trace_begin(TRACE_FORWARD);
    return trace_end(forward_pass(m, B));
}

int mlp_loss(Mlp* m, float scale, int B) {
    trace_begin(TRACE_LOSS);
    return trace_end(m->k->mse_forward(m->loss, m->out, m->y, scale, B));
}

int mlp_backward(Mlp* m, int B) {
    return mlp_backward_announcing(m, B, NULL, NULL);
}

// Says that the gradients from first_grad (a tensor of m->g) to the buffer's end are final.
static int announce(const Mlp* m, GradsReady ready, void* ctx, const float* first_grad) {
    return ready != NULL ? ready(ctx, (int)(first_grad - m->grads)) : 0;
}

// A linear layer's backward pass in two halves: its parameters' gradients, final at once
// (announced), then its input's (unless dinp is NULL), which the earlier layers wait for.
static int linear_backward_announcing(Mlp* m, float* dinp, float* dw, float* dbias,
                                      const float* dout, const float* inp, const float* w, int B,
                                      int C, int OC, GradsReady ready, void* ctx) {
    RETURN_IF_FAILED(m->k->linear_backward(NULL, dw, dbias, dout, inp, w, B, C, OC));
    RETURN_IF_FAILED(announce(m, ready, ctx, dw));
    return dinp != NULL ? m->k->linear_backward(dinp, NULL, NULL, dout, inp, w, B, C, OC) : 0;
}

static int backward_pass(Mlp* m, int B, GradsReady ready, void* ctx) {
    // The forward pass in reverse; each step turns the gradient of a layer's
    // output into the gradients of its parameters and of its input. The layers sit in
    // the buffer in order, so the final gradients grow from its end towards its start.
    const Kernels* k = m->k;
    int H = m->hidden;
    RETURN_IF_FAILED(k->mse_backward(m->d_out, m->out, m->y, B));
    RETURN_IF_FAILED(linear_backward_announcing(m, m->d_a3, m->g.w3, m->g.b3, m->d_out, m->a3,
                                                m->p.w3, B, H, 1, ready, ctx));
    RETURN_IF_FAILED(k->relu_backward(m->d_ln, m->d_a3, m->a3, B * H));
    RETURN_IF_FAILED(k->layernorm_backward(m->d_h2, m->g.ln_gamma, m->g.ln_beta, m->d_ln, m->h2,
                                           m->ln_mean, m->ln_rstd, m->p.ln_gamma, B, H));
    RETURN_IF_FAILED(announce(m, ready, ctx, m->g.ln_gamma));
    RETURN_IF_FAILED(linear_backward_announcing(m, m->d_a1, m->g.w2, m->g.b2, m->d_h2, m->a1,
                                                m->p.w2, B, H, H, ready, ctx));
    RETURN_IF_FAILED(k->relu_backward(m->d_h1, m->d_a1, m->a1, B * H));
    // The input needs no gradient: dinp = NULL.
    return linear_backward_announcing(m, NULL, m->g.w1, m->g.b1, m->d_h1, m->x, m->p.w1, B, 1, H,
                                      ready, ctx);
}

int mlp_backward_announcing(Mlp* m, int B, GradsReady ready, void* ctx) {
    trace_begin(TRACE_BACKWARD);
    return trace_end(backward_pass(m, B, ready, ctx));
}

int mlp_update(Mlp* m, Optimizer* opt) {
    return mlp_update_from(m, opt, m->grads);
}

// Adam's settings for opt's current step.
static AdamSettings adam_settings(const Optimizer* opt) {
    return (AdamSettings){opt->learning_rate, ADAM_BETA1, ADAM_BETA2, ADAM_EPS, opt->step};
}

static int optimizer_step(Mlp* m, Optimizer* opt, const float* grads) {
    opt->step++;
    if (opt->kind == OPTIMIZER_SGD)
        return m->k->sgd_update(m->params, m->opt_m, grads, opt->learning_rate, opt->momentum,
                                m->num_params);
    return m->k->adam_update(m->params, m->opt_m, m->opt_v, grads, adam_settings(opt),
                             m->num_params);
}

int mlp_update_from(Mlp* m, Optimizer* opt, const float* grads) {
    trace_begin(TRACE_OPTIMIZER);
    return trace_end(optimizer_step(m, opt, grads));
}

// ----------------------------------------------------------------------------
// whole batches, as --kernels says

const char* mlp_kernels_name(MlpKernels kernels) {
    const char* names[] = {"auto", "unfused", "graph", "fused"};
    return names[kernels];
}

int mlp_kernels_check(MlpKernels request, bool on_gpu, char* why, size_t why_len) {
    if (!on_gpu && (request == MLP_KERNELS_GRAPH || request == MLP_KERNELS_FUSED)) {
        snprintf(why, why_len,
                 "--kernels %s needs a GPU, and this run is on the CPU (use --kernels auto, "
                 "or --device cuda on a machine with a GPU)",
                 mlp_kernels_name(request));
        return -1;
    }
    return 0;
}

int mlp_kernels_choose(MlpKernels request, bool on_gpu, size_t shared_bytes, int hidden,
                       int max_batch, MlpKernels* chosen, char* why, size_t why_len) {
    RETURN_IF_FAILED(mlp_kernels_check(request, on_gpu, why, why_len));
    size_t needed = fused_shared_bytes(hidden, max_batch);
    bool fits = on_gpu && needed <= shared_bytes;
    if (request == MLP_KERNELS_FUSED && !fits) {
        snprintf(why, why_len,
                 "--kernels fused: hidden size %d and batch size %d need %zu KiB of shared "
                 "memory, and this GPU has %zu KiB per block (use --kernels graph or auto)",
                 hidden, max_batch, (needed + 1023) / 1024, shared_bytes / 1024);
        return -1;
    }
    if (request != MLP_KERNELS_AUTO)
        *chosen = request;
    else
        *chosen = !on_gpu ? MLP_KERNELS_UNFUSED : fits ? MLP_KERNELS_FUSED : MLP_KERNELS_GRAPH;
    return 0;
}

void mlp_kernels_describe(MlpKernels request, MlpKernels chosen, bool on_gpu, char* out,
                          size_t out_len) {
    if (!on_gpu)
        snprintf(out, out_len, "cpu");
    else if (request != MLP_KERNELS_AUTO)
        snprintf(out, out_len, "%s", mlp_kernels_name(chosen));
    else
        snprintf(out, out_len, "%s (auto: the model %s one block's shared memory)",
                 mlp_kernels_name(chosen), chosen == MLP_KERNELS_FUSED ? "fits" : "does not fit");
}

size_t mlp_gpu_shared_bytes(void) {
#ifdef HAVE_CUDA
    return fast_step_shared_limit();
#else
    return 0;
#endif
}

int mlp_use_kernels(Mlp* m, MlpKernels kernels) {
    if (m->fast != NULL) { // a model that chose graph or fused keeps it
        rank_log("error: --kernels %s: the model already runs %s", mlp_kernels_name(kernels),
                 mlp_kernels_name(m->kernels));
        return -1;
    }
    if (kernels == MLP_KERNELS_UNFUSED)
        return 0;
#ifdef HAVE_CUDA
    if (m->k == &kernels_cuda && kernels != MLP_KERNELS_AUTO) {
        RETURN_IF_FAILED(fast_step_create(&m->fast, m, kernels));
        m->kernels = kernels;
        return 0;
    }
#endif
    rank_log("error: --kernels %s needs the model on a GPU", mlp_kernels_name(kernels));
    return -1;
}

// Runs pass over b the graph's or the fused kernel's way, if mlp_use_kernels chose one:
// returns 1 when it did not (the caller goes step by step), else 0 or -1. Its one launch is
// one span: forward (and loss) for FAST_LOSS, as the step-by-step way names them.
static int fast_pass(Mlp* m, const MlpBatch* b, FastPass pass, Optimizer* opt) {
#ifdef HAVE_CUDA
    static const TraceKind spans[] = {[FAST_LOSS] = TRACE_FORWARD,
                                      [FAST_GRADIENTS] = TRACE_FAST_GRADIENTS,
                                      [FAST_STEP] = TRACE_FAST_STEP};
    if (m->fast == NULL)
        return 1;
    trace_begin(spans[pass]);
    if (pass != FAST_STEP)
        return trace_end(fast_step_run(m->fast, m, b, pass, NULL));
    opt->step++;
    FastUpdate update = {opt->kind, adam_settings(opt), opt->momentum};
    return trace_end(fast_step_run(m->fast, m, b, FAST_STEP, &update));
#else
    (void)m, (void)b, (void)pass, (void)opt;
    return 1;
#endif
}

int mlp_batch_loss(Mlp* m, const MlpBatch* b) {
    int fast = fast_pass(m, b, FAST_LOSS, NULL);
    if (fast != 1)
        return fast;
    RETURN_IF_FAILED(mlp_load_batch(m, b->data_x, b->data_y, b->indices + b->first, b->B));
    RETURN_IF_FAILED(mlp_forward(m, b->B));
    return mlp_loss(m, b->loss_scale, b->B);
}

int mlp_batch_gradients(Mlp* m, const MlpBatch* b) {
    int fast = fast_pass(m, b, FAST_GRADIENTS, NULL);
    if (fast != 1)
        return fast;
    RETURN_IF_FAILED(mlp_batch_loss(m, b));
    return mlp_backward(m, b->B);
}

int mlp_train_step(Mlp* m, Optimizer* opt, const MlpBatch* b) {
    int fast = fast_pass(m, b, FAST_STEP, opt);
    if (fast != 1)
        return fast;
    RETURN_IF_FAILED(mlp_batch_gradients(m, b));
    return mlp_update(m, opt);
}

// ----------------------------------------------------------------------------
// results to the host

int mlp_take_loss(Mlp* m, float* host_loss) {
    RETURN_IF_FAILED(m->k->download(host_loss, m->loss, sizeof(float)));
    return m->k->zero(m->loss, sizeof(float));
}

int mlp_predict(Mlp* m, float* out, const float* x, int n) {
    const Kernels* k = m->k;
    float* device_x = k->alloc((size_t)n * sizeof(float));
    int* device_order = k->alloc((size_t)n * sizeof(int));
    int* order = malloc_nonzero((size_t)n * sizeof(int));
    int err = device_x == NULL || device_order == NULL || order == NULL;
    for (int i = 0; !err && i < n; i++)
        order[i] = i;
    err = err || k->upload(device_x, x, (size_t)n * sizeof(float)) ||
          k->upload(device_order, order, (size_t)n * sizeof(int));
    // The inputs stand in for the targets too: no loss is taken of these passes.
    for (int first = 0; !err && first < n; first += m->max_batch) {
        int B = n - first < m->max_batch ? n - first : m->max_batch;
        err = mlp_load_batch(m, device_x, device_x, device_order + first, B) || mlp_forward(m, B) ||
              k->download(out + first, m->out, (size_t)B * sizeof(float));
    }
    free(order);
    if (device_order != NULL)
        k->release(device_order);
    if (device_x != NULL)
        k->release(device_x);
    return err ? -1 : 0;
}

int mlp_get_params(const Mlp* m, float* host_params) {
    return m->k->download(host_params, m->params, (size_t)m->num_params * sizeof(float));
}

int mlp_get_state(const Mlp* m, float* params, float* opt_m, float* opt_v) {
    size_t bytes = (size_t)m->num_params * sizeof(float);
    RETURN_IF_FAILED(m->k->download(params, m->params, bytes));
    RETURN_IF_FAILED(m->k->download(opt_m, m->opt_m, bytes));
    return m->k->download(opt_v, m->opt_v, bytes);
}

int mlp_set_state(Mlp* m, const float* params, const float* opt_m, const float* opt_v) {
    size_t bytes = (size_t)m->num_params * sizeof(float);
    RETURN_IF_FAILED(m->k->upload(m->params, params, bytes));
    RETURN_IF_FAILED(m->k->upload(m->opt_m, opt_m, bytes));
    return m->k->upload(m->opt_v, opt_v, bytes);
}

void mlp_print_summary(const Mlp* m) {
    int H = m->hidden;
    printf("Model: Linear(1, %d) -> ReLU -> Linear(%d, %d) -> LayerNorm(%d) -> ReLU -> "
           "Linear(%d, 1)\n",
           H, H, H, H, H);
    printf("Total parameters: %d\n", m->num_params);
}
