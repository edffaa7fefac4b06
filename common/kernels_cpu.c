/*
 * kernels_cpu.c - the model's computations in plain C: the specification.
 *
 * Each function is the twin of a CUDA kernel in kernels_cuda.cu, which keeps
 * these comments so that a diff of the two shows only the parallelisation.
 * The inner loops run over contiguous memory so that the compiler vectorises
 * them (without -ffast-math); see dot_cpu and weighted_row_sum_cpu.
 *
 * Shapes: B batch rows, C input features, OC output features, N elements.
 * APIs: kernels_cpu.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels.h"

// ----------------------------------------------------------------------------
// memory: the CPU's memory is host memory

static void* alloc_cpu(size_t bytes) {
    // Aligned to a cache line, so that vector loads never straddle two and every
    // process gets the same speed; zeroed, as the GPU's alloc is.
    size_t rounded = (bytes + 63) / 64 * 64;
    void* ptr = aligned_alloc(64, rounded > 0 ? rounded : 64);
    if (ptr == NULL)
        check_report(__FILE__, __LINE__, "aligned_alloc", "out of memory");
    else
        memset(ptr, 0, rounded);
    return ptr;
}

static void release_cpu(void* ptr) {
    free(ptr);
}

static int copy_cpu(void* dst, const void* src, size_t bytes) {
    memcpy(dst, src, bytes);
    return 0;
}

static int zero_cpu(void* ptr, size_t bytes) {
    memset(ptr, 0, bytes);
    return 0;
}

static int synchronize_cpu(void) {
    return 0;
}

// ----------------------------------------------------------------------------
// data

static int gather_batch_cpu(float* x, float* y, const float* data_x, const float* data_y,
                            const int* indices, int B) {
    for (int b = 0; b < B; b++) {
        x[b] = data_x[indices[b]];
        y[b] = data_y[indices[b]];
    }
    return 0;
}

// ----------------------------------------------------------------------------
// linear layer

// sum over i < n of a[i] * b[i]
static inline float dot_cpu(const float* restrict a, const float* restrict b, int n) {
    float sum = 0.0f;
    // The compiler may not reorder one running sum on its own (only -ffast-math
    // lets it, everywhere); this pragma allows it here alone, so the loop keeps
    // eight partial sums in one vector register (built with -fopenmp-simd).
#pragma omp simd reduction(+ : sum)
    for (int i = 0; i < n; i++)
        sum += a[i] * b[i];
    return sum;
}

// out[k] = sum over j < n of scale[j * scale_stride] * rows[j * row_stride + k], k < width:
// n scaled rows added up, so the inner loop is contiguous and vectorises. Four rows
// go in at a time, which reads and writes out once for four of them.
static void weighted_row_sum_cpu(float* restrict out, const float* restrict scale, int scale_stride,
                                 const float* restrict rows, int row_stride, int n, int width) {
    for (int k = 0; k < width; k++)
        out[k] = 0.0f;
    int j = 0;
    for (; j + 4 <= n; j += 4) {
        const float* r0 = rows + (size_t)j * row_stride;
        const float *r1 = r0 + row_stride, *r2 = r1 + row_stride, *r3 = r2 + row_stride;
        float s0 = scale[(size_t)j * scale_stride], s1 = scale[(size_t)(j + 1) * scale_stride];
        float s2 = scale[(size_t)(j + 2) * scale_stride],
              s3 = scale[(size_t)(j + 3) * scale_stride];
        for (int k = 0; k < width; k++)
            out[k] += s0 * r0[k] + s1 * r1[k] + s2 * r2[k] + s3 * r3[k];
    }
    for (; j < n; j++) {
        float s = scale[(size_t)j * scale_stride];
        const float* row = rows + (size_t)j * row_stride;
        for (int k = 0; k < width; k++)
            out[k] += s * row[k];
    }
}

// out_row[o .. o + 4) = bias + x . w[o .. o + 4): four dot products in one pass, so
// that each input value, once loaded, meets four weight rows.
static inline void dot4_cpu(float* restrict out_row, const float* restrict x,
                            const float* restrict w, const float* restrict bias, int o, int C) {
    const float* w0 = w + (size_t)o * C;
    const float *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int i = 0; i < C; i++) {
        s0 += x[i] * w0[i];
        s1 += x[i] * w1[i];
        s2 += x[i] * w2[i];
        s3 += x[i] * w3[i];
    }
    out_row[o] = bias[o] + s0;
    out_row[o + 1] = bias[o + 1] + s1;
    out_row[o + 2] = bias[o + 2] + s2;
    out_row[o + 3] = bias[o + 3] + s3;
}

static int linear_forward_cpu(float* restrict out, const float* restrict inp,
                              const float* restrict w, const float* restrict bias, int B, int C,
                              int OC) {
    for (int b = 0; b < B; b++) {
        float* out_row = out + (size_t)b * OC;
        const float* x = inp + (size_t)b * C;
        int o = 0;
        if (C == 1) // one input: a dot product of length 1 would waste the vector unit
            for (; o < OC; o++)
                out_row[o] = bias[o] + x[0] * w[o];
        for (; o + 4 <= OC; o += 4)
            dot4_cpu(out_row, x, w, bias, o, C);
        for (; o < OC; o++)
            out_row[o] = bias[o] + dot_cpu(x, w + (size_t)o * C, C);
    }
    return 0;
}

static int linear_backward_cpu(float* restrict dinp, float* restrict dw, float* restrict dbias,
                               const float* restrict dout, const float* restrict inp,
                               const float* restrict w, int B, int C, int OC) {
    // dbias[o] = sum over b of dout[b][o]
    for (int o = 0; o < OC; o++) {
        float sum = 0.0f;
        for (int b = 0; b < B; b++)
            sum += dout[(size_t)b * OC + o];
        dbias[o] = sum;
    }
    // dw[o][:] = sum over b of dout[b][o] * inp[b][:]
    for (int o = 0; o < OC; o++)
        weighted_row_sum_cpu(dw + (size_t)o * C, dout + o, OC, inp, C, B, C);
    // dinp[b][:] = sum over o of dout[b][o] * w[o][:]
    if (dinp != NULL)
        for (int b = 0; b < B; b++)
            weighted_row_sum_cpu(dinp + (size_t)b * C, dout + (size_t)b * OC, 1, w, C, OC, C);
    return 0;
}

// ----------------------------------------------------------------------------
// ReLU

static int relu_forward_cpu(float* out, const float* inp, int N) {
    for (int i = 0; i < N; i++)
        out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
    return 0;
}

static int relu_backward_cpu(float* dinp, const float* dout, const float* out, int N) {
    for (int i = 0; i < N; i++)
        dinp[i] = out[i] > 0.0f ? dout[i] : 0.0f;
    return 0;
}

// ----------------------------------------------------------------------------
// LayerNorm over the C features of each row

static int layernorm_forward_cpu(float* restrict out, float* restrict mean, float* restrict rstd,
                                 const float* restrict inp, const float* restrict gamma,
                                 const float* restrict beta, int B, int C) {
    for (int b = 0; b < B; b++) {
        const float* x = inp + (size_t)b * C;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum) // partial sums, as in dot_cpu
        for (int i = 0; i < C; i++)
            sum += x[i];
        float m = sum / C;
        // the variance from the centred values: (x - m)^2, not x^2 - m^2, which cancels
        float sum_sq = 0.0f;
#pragma omp simd reduction(+ : sum_sq)
        for (int i = 0; i < C; i++)
            sum_sq += (x[i] - m) * (x[i] - m);
        float s = 1.0f / sqrtf(sum_sq / C + LAYERNORM_EPS);
        for (int i = 0; i < C; i++)
            out[(size_t)b * C + i] = (x[i] - m) * s * gamma[i] + beta[i];
        mean[b] = m;
        rstd[b] = s;
    }
    return 0;
}

static int layernorm_backward_cpu(float* restrict dinp, float* restrict dgamma,
                                  float* restrict dbeta, const float* restrict dout,
                                  const float* restrict inp, const float* restrict mean,
                                  const float* restrict rstd, const float* restrict gamma, int B,
                                  int C) {
    memset(dgamma, 0, (size_t)C * sizeof(float));
    memset(dbeta, 0, (size_t)C * sizeof(float));
    for (int b = 0; b < B; b++) {
        const float* x = inp + (size_t)b * C;
        const float* d = dout + (size_t)b * C;
        // Two row sums: of dnorm = dout * gamma, and of dnorm * norm.
        float sum_dnorm = 0.0f, sum_dnorm_norm = 0.0f;
#pragma omp simd reduction(+ : sum_dnorm, sum_dnorm_norm)
        for (int i = 0; i < C; i++) {
            float norm = (x[i] - mean[b]) * rstd[b];
            float dnorm = d[i] * gamma[i];
            sum_dnorm += dnorm;
            sum_dnorm_norm += dnorm * norm;
        }
        float mean_dnorm = sum_dnorm / C, mean_dnorm_norm = sum_dnorm_norm / C;
        for (int i = 0; i < C; i++) {
            float norm = (x[i] - mean[b]) * rstd[b];
            float dnorm = d[i] * gamma[i];
            dgamma[i] += d[i] * norm;
            dbeta[i] += d[i];
            // the mean and the variance depend on every input of the row
            dinp[(size_t)b * C + i] = (dnorm - mean_dnorm - norm * mean_dnorm_norm) * rstd[b];
        }
    }
    return 0;
}

// ----------------------------------------------------------------------------
// mean squared error

static int mse_forward_cpu(float* loss, const float* pred, const float* target, float scale,
                           int B) {
    float sum = 0.0f;
    for (int b = 0; b < B; b++)
        sum += (pred[b] - target[b]) * (pred[b] - target[b]);
    *loss += scale * sum;
    return 0;
}

static int mse_backward_cpu(float* dpred, const float* pred, const float* target, int B) {
    for (int b = 0; b < B; b++)
        dpred[b] = 2.0f * (pred[b] - target[b]) / B;
    return 0;
}

// ----------------------------------------------------------------------------
// optimizers

static int adam_update_cpu(float* restrict params, float* restrict m, float* restrict v,
                           const float* restrict grads, AdamSettings s, int N) {
    // torch.optim.Adam: p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), with the bias
    // corrections bc = 1 - beta^step. Multiplying through by sqrt(bc2) leaves one
    // square root and one division per element.
    float bc1 = 1.0f - powf(s.beta1, (float)s.step);
    float bc2_sqrt = sqrtf(1.0f - powf(s.beta2, (float)s.step));
    float step_size = s.learning_rate / bc1 * bc2_sqrt;
    float eps = s.eps * bc2_sqrt;
    for (int i = 0; i < N; i++) {
        m[i] = s.beta1 * m[i] + (1.0f - s.beta1) * grads[i];
        v[i] = s.beta2 * v[i] + (1.0f - s.beta2) * grads[i] * grads[i];
        params[i] -= step_size * m[i] / (sqrtf(v[i]) + eps);
    }
    return 0;
}

static int sgd_update_cpu(float* restrict params, float* restrict velocity,
                          const float* restrict grads, float learning_rate, float momentum, int N) {
    for (int i = 0; i < N; i++) {
        velocity[i] = momentum * velocity[i] + grads[i];
        params[i] -= learning_rate * velocity[i];
    }
    return 0;
}

// ----------------------------------------------------------------------------

const Kernels kernels_cpu = {
    .name = "cpu",
    .alloc = alloc_cpu,
    .release = release_cpu,
    .upload = copy_cpu,
    .download = copy_cpu,
    .zero = zero_cpu,
    .synchronize = synchronize_cpu,
    .gather_batch = gather_batch_cpu,
    .linear_forward = linear_forward_cpu,
    .linear_backward = linear_backward_cpu,
    .relu_forward = relu_forward_cpu,
    .relu_backward = relu_backward_cpu,
    .layernorm_forward = layernorm_forward_cpu,
    .layernorm_backward = layernorm_backward_cpu,
    .mse_forward = mse_forward_cpu,
    .mse_backward = mse_backward_cpu,
    .adam_update = adam_update_cpu,
    .sgd_update = sgd_update_cpu,
};
