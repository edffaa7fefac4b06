/*
 * mlp.c - the model's passes, written once for every device (see mlp.h).
 */
#include "mlp.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
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
    *m = (Mlp){.k = k, .hidden = hidden, .max_batch = max_batch};
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

static int optimizer_step(Mlp* m, Optimizer* opt, const float* grads) {
    opt->step++;
    if (opt->kind == OPTIMIZER_SGD)
        return m->k->sgd_update(m->params, m->opt_m, grads, opt->learning_rate, opt->momentum,
                                m->num_params);
    AdamSettings s = {opt->learning_rate, ADAM_BETA1, ADAM_BETA2, ADAM_EPS, opt->step};
    return m->k->adam_update(m->params, m->opt_m, m->opt_v, grads, s, m->num_params);
}

int mlp_update_from(Mlp* m, Optimizer* opt, const float* grads) {
    trace_begin(TRACE_OPTIMIZER);
    return trace_end(optimizer_step(m, opt, grads));
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
