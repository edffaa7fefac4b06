/*
 * kernels_cuda.cu - the model's computations as CUDA kernels: the CPU twins, in parallel.
 *
 * Each kernel is the twin of a function in kernels_cpu.c and keeps its
 * comments, so that a diff of the two files shows only the parallelisation.
 * Most kernels give one thread one output element, and that thread sums one
 * term after another, as the CPU twin's loop reads (for the linear layer, the
 * reference loops, linear_forward_naive and linear_backward_naive). The two
 * devices agree to rounding, not bit for bit: the CPU keeps partial sums in
 * vector lanes in a few places, each compiler fuses multiplies and adds (FMA)
 * in its own places, and the CPU flushes subnormal floats to zero, which these
 * kernels do not (nvcc flushes only with -ftz=true, which the Makefile leaves off).
 * Each launcher has its CPU twin's signature: it launches on the default
 * stream, checks the launch and returns 0, or -1 after reporting an error.
 * Errors inside a kernel surface at the next synchronize or copy.
 *
 * Shapes: B batch rows, C input features, OC output features, N elements.
 * APIs: kernels_cuda; from CUDA: cudaMalloc, cudaMemset, cudaMemcpy, cudaFree,
 *       cudaDeviceSynchronize, cudaGetLastError, __global__, <<<grid, block>>>,
 *       __shared__, __syncthreads.
 */
#include <cuda_runtime.h>
#include <math.h>

#include "check.h"
#include "kernels.h"

// Threads per block of every elementwise launch: a multiple of the 32-thread warp.
#define BLOCK_SIZE 256

// Enough blocks of BLOCK_SIZE threads for n threads (n > 0).
static int blocks_for(int n) {
    return (n + BLOCK_SIZE - 1) / BLOCK_SIZE;
}

// This thread's position in the whole grid: the index of its work item.
static __device__ int thread_index(void) {
    return (int)(blockIdx.x * blockDim.x + threadIdx.x);
}

// ----------------------------------------------------------------------------
// memory: the GPU's own memory, reached from the host by copies

static void* alloc_cuda(size_t bytes) {
    // cudaMemset so that every buffer starts at zero, as calloc gives on the CPU.
    void* ptr = NULL;
    size_t size = bytes > 0 ? bytes : 1;
    cudaError_t err = cudaMalloc(&ptr, size);
    if (err != cudaSuccess) {
        check_report(__FILE__, __LINE__, "cudaMalloc(&ptr, size)", cudaGetErrorString(err));
        return NULL;
    }
    err = cudaMemset(ptr, 0, size);
    if (err != cudaSuccess) {
        check_report(__FILE__, __LINE__, "cudaMemset(ptr, 0, size)", cudaGetErrorString(err));
        cudaFree(ptr);
        return NULL;
    }
    return ptr;
}

static void release_cuda(void* ptr) {
    cudaError_t err = cudaFree(ptr);
    if (err != cudaSuccess)
        check_report(__FILE__, __LINE__, "cudaFree(ptr)", cudaGetErrorString(err));
}

static int upload_cuda(void* device_dst, const void* host_src, size_t bytes) {
    CUDA_CHECK(cudaMemcpy(device_dst, host_src, bytes, cudaMemcpyHostToDevice));
    return 0;
}

static int download_cuda(void* host_dst, const void* device_src, size_t bytes) {
    CUDA_CHECK(cudaMemcpy(host_dst, device_src, bytes, cudaMemcpyDeviceToHost));
    return 0;
}

static int zero_cuda(void* ptr, size_t bytes) {
    CUDA_CHECK(cudaMemset(ptr, 0, bytes));
    return 0;
}

static int synchronize_cuda(void) {
    // A kernel that failed after its launch reports here, at the first wait.
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// ----------------------------------------------------------------------------
// data

// One thread per batch row b.
__global__ void gather_batch_kernel(float* x, float* y, const float* data_x, const float* data_y,
                                    const int* indices, int B) {
    int b = thread_index();
    if (b >= B)
        return;
    x[b] = data_x[indices[b]];
    y[b] = data_y[indices[b]];
}

static int gather_batch_cuda(float* x, float* y, const float* data_x, const float* data_y,
                             const int* indices, int B) {
    if (B == 0)
        return 0;
    gather_batch_kernel<<<blocks_for(B), BLOCK_SIZE>>>(x, y, data_x, data_y, indices, B);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// ----------------------------------------------------------------------------
// linear layer

// One thread per output element (b, o); neighbouring threads share the row b of inp.
__global__ void linear_forward_kernel(float* __restrict__ out, const float* __restrict__ inp,
                                      const float* __restrict__ w, const float* __restrict__ bias,
                                      int B, int C, int OC) {
    int idx = thread_index();
    if (idx >= B * OC)
        return;
    int b = idx / OC, o = idx % OC;
    const float* inp_row = inp + (size_t)b * C;
    const float* w_row = w + (size_t)o * C;
    // sum over i < C of inp[b][i] * w[o][i]
    float sum = 0.0f;
    for (int i = 0; i < C; i++)
        sum += inp_row[i] * w_row[i];
    out[(size_t)b * OC + o] = bias[o] + sum;
}

static int linear_forward_cuda(float* out, const float* inp, const float* w, const float* bias,
                               int B, int C, int OC) {
    if (B * OC == 0)
        return 0;
    linear_forward_kernel<<<blocks_for(B * OC), BLOCK_SIZE>>>(out, inp, w, bias, B, C, OC);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// One thread per bias o.
__global__ void linear_backward_dbias_kernel(float* __restrict__ dbias,
                                             const float* __restrict__ dout, int B, int OC) {
    int o = thread_index();
    if (o >= OC)
        return;
    // dbias[o] = sum over b of dout[b][o]
    float sum = 0.0f;
    for (int b = 0; b < B; b++)
        sum += dout[(size_t)b * OC + o];
    dbias[o] = sum;
}

// One thread per weight (o, i).
__global__ void linear_backward_dw_kernel(float* __restrict__ dw, const float* __restrict__ dout,
                                          const float* __restrict__ inp, int B, int C, int OC) {
    int idx = thread_index();
    if (idx >= OC * C)
        return;
    int o = idx / C, i = idx % C;
    // dw[o][i] = sum over b of dout[b][o] * inp[b][i]
    float sum = 0.0f;
    for (int b = 0; b < B; b++)
        sum += dout[(size_t)b * OC + o] * inp[(size_t)b * C + i];
    dw[(size_t)o * C + i] = sum;
}

// One thread per input element (b, i).
__global__ void linear_backward_dinp_kernel(float* __restrict__ dinp,
                                            const float* __restrict__ dout,
                                            const float* __restrict__ w, int B, int C, int OC) {
    int idx = thread_index();
    if (idx >= B * C)
        return;
    int b = idx / C, i = idx % C;
    // dinp[b][i] = sum over o of dout[b][o] * w[o][i]
    float sum = 0.0f;
    for (int o = 0; o < OC; o++)
        sum += dout[(size_t)b * OC + o] * w[(size_t)o * C + i];
    dinp[(size_t)b * C + i] = sum;
}

static int linear_backward_cuda(float* dinp, float* dw, float* dbias, const float* dout,
                                const float* inp, const float* w, int B, int C, int OC) {
    // Three kernels, one per gradient: each thread owns the element it writes,
    // so no two threads ever add to the same place.
    if (dw != NULL && OC > 0) {
        linear_backward_dbias_kernel<<<blocks_for(OC), BLOCK_SIZE>>>(dbias, dout, B, OC);
        CUDA_CHECK(cudaGetLastError());
    }
    if (dw != NULL && OC * C > 0) {
        linear_backward_dw_kernel<<<blocks_for(OC * C), BLOCK_SIZE>>>(dw, dout, inp, B, C, OC);
        CUDA_CHECK(cudaGetLastError());
    }
    if (dinp != NULL && B * C > 0) {
        linear_backward_dinp_kernel<<<blocks_for(B * C), BLOCK_SIZE>>>(dinp, dout, w, B, C, OC);
        CUDA_CHECK(cudaGetLastError());
    }
    return 0;
}

// ----------------------------------------------------------------------------
// ReLU

// One thread per element i, here and in every elementwise kernel below.
__global__ void relu_forward_kernel(float* out, const float* inp, int N) {
    int i = thread_index();
    if (i < N)
        out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

static int relu_forward_cuda(float* out, const float* inp, int N) {
    if (N == 0)
        return 0;
    relu_forward_kernel<<<blocks_for(N), BLOCK_SIZE>>>(out, inp, N);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

__global__ void relu_backward_kernel(float* dinp, const float* dout, const float* out, int N) {
    int i = thread_index();
    if (i < N)
        dinp[i] = out[i] > 0.0f ? dout[i] : 0.0f;
}

static int relu_backward_cuda(float* dinp, const float* dout, const float* out, int N) {
    if (N == 0)
        return 0;
    relu_backward_kernel<<<blocks_for(N), BLOCK_SIZE>>>(dinp, dout, out, N);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// ----------------------------------------------------------------------------
// LayerNorm over the C features of each row

// One thread per row b: the row's sums run in the CPU's order. Rows are few
// (one per sample of the batch) and short, so this is enough parallelism here.
__global__ void layernorm_forward_kernel(float* __restrict__ out, float* __restrict__ mean,
                                         float* __restrict__ rstd, const float* __restrict__ inp,
                                         const float* __restrict__ gamma,
                                         const float* __restrict__ beta, int B, int C) {
    int b = thread_index();
    if (b >= B)
        return;
    const float* x = inp + (size_t)b * C;
    float sum = 0.0f;
    for (int i = 0; i < C; i++)
        sum += x[i];
    float m = sum / C;
    // the variance from the centred values: (x - m)^2, not x^2 - m^2, which cancels
    float sum_sq = 0.0f;
    for (int i = 0; i < C; i++)
        sum_sq += (x[i] - m) * (x[i] - m);
    float s = 1.0f / sqrtf(sum_sq / C + LAYERNORM_EPS);
    for (int i = 0; i < C; i++)
        out[(size_t)b * C + i] = (x[i] - m) * s * gamma[i] + beta[i];
    mean[b] = m;
    rstd[b] = s;
}

static int layernorm_forward_cuda(float* out, float* mean, float* rstd, const float* inp,
                                  const float* gamma, const float* beta, int B, int C) {
    if (B == 0)
        return 0;
    layernorm_forward_kernel<<<blocks_for(B), BLOCK_SIZE>>>(out, mean, rstd, inp, gamma, beta, B,
                                                            C);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// The CPU twin adds every row's share to dgamma and dbeta as it goes; here a
// row kernel writes dinp and a column kernel sums dgamma and dbeta over the rows.

// One thread per row b.
__global__ void layernorm_backward_dinp_kernel(float* __restrict__ dinp,
                                               const float* __restrict__ dout,
                                               const float* __restrict__ inp,
                                               const float* __restrict__ mean,
                                               const float* __restrict__ rstd,
                                               const float* __restrict__ gamma, int B, int C) {
    int b = thread_index();
    if (b >= B)
        return;
    const float* x = inp + (size_t)b * C;
    const float* d = dout + (size_t)b * C;
    // Two row sums: of dnorm = dout * gamma, and of dnorm * norm.
    float sum_dnorm = 0.0f, sum_dnorm_norm = 0.0f;
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
        // the mean and the variance depend on every input of the row
        dinp[(size_t)b * C + i] = (dnorm - mean_dnorm - norm * mean_dnorm_norm) * rstd[b];
    }
}

// One thread per feature i, summing over the batch rows b in order.
__global__ void layernorm_backward_dparams_kernel(float* __restrict__ dgamma,
                                                  float* __restrict__ dbeta,
                                                  const float* __restrict__ dout,
                                                  const float* __restrict__ inp,
                                                  const float* __restrict__ mean,
                                                  const float* __restrict__ rstd, int B, int C) {
    int i = thread_index();
    if (i >= C)
        return;
    float sum_dgamma = 0.0f, sum_dbeta = 0.0f;
    for (int b = 0; b < B; b++) {
        float norm = (inp[(size_t)b * C + i] - mean[b]) * rstd[b];
        float d = dout[(size_t)b * C + i];
        sum_dgamma += d * norm;
        sum_dbeta += d;
    }
    dgamma[i] = sum_dgamma;
    dbeta[i] = sum_dbeta;
}

static int layernorm_backward_cuda(float* dinp, float* dgamma, float* dbeta, const float* dout,
                                   const float* inp, const float* mean, const float* rstd,
                                   const float* gamma, int B, int C) {
    if (C == 0)
        return 0;
    layernorm_backward_dparams_kernel<<<blocks_for(C), BLOCK_SIZE>>>(dgamma, dbeta, dout, inp, mean,
                                                                     rstd, B, C);
    CUDA_CHECK(cudaGetLastError());
    if (B > 0) {
        layernorm_backward_dinp_kernel<<<blocks_for(B), BLOCK_SIZE>>>(dinp, dout, inp, mean, rstd,
                                                                      gamma, B, C);
        CUDA_CHECK(cudaGetLastError());
    }
    return 0;
}

// ----------------------------------------------------------------------------
// mean squared error

// One block: each thread sums a strided share of the rows, then the block adds
// the shares pairwise in shared memory. One block and no atomics keep the order
// fixed, so the loss is the same bits on every run.
__global__ void mse_forward_kernel(float* loss, const float* pred, const float* target, float scale,
                                   int B) {
    __shared__ float shares[BLOCK_SIZE];
    float sum = 0.0f;
    for (int b = threadIdx.x; b < B; b += blockDim.x)
        sum += (pred[b] - target[b]) * (pred[b] - target[b]);
    shares[threadIdx.x] = sum;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half)
            shares[threadIdx.x] += shares[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        *loss += scale * shares[0];
}

static int mse_forward_cuda(float* loss, const float* pred, const float* target, float scale,
                            int B) {
    if (B == 0)
        return 0;
    mse_forward_kernel<<<1, BLOCK_SIZE>>>(loss, pred, target, scale, B);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

__global__ void mse_backward_kernel(float* dpred, const float* pred, const float* target, int B) {
    int b = thread_index();
    if (b < B)
        dpred[b] = 2.0f * (pred[b] - target[b]) / B;
}

static int mse_backward_cuda(float* dpred, const float* pred, const float* target, int B) {
    if (B == 0)
        return 0;
    mse_backward_kernel<<<blocks_for(B), BLOCK_SIZE>>>(dpred, pred, target, B);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// ----------------------------------------------------------------------------
// optimizers

// One thread per parameter i.
__global__ void adam_update_kernel(float* __restrict__ params, float* __restrict__ m,
                                   float* __restrict__ v, const float* __restrict__ grads,
                                   AdamSettings s, float step_size, float eps, int N) {
    int i = thread_index();
    if (i >= N)
        return;
    m[i] = s.beta1 * m[i] + (1.0f - s.beta1) * grads[i];
    v[i] = s.beta2 * v[i] + (1.0f - s.beta2) * grads[i] * grads[i];
    params[i] -= step_size * m[i] / (sqrtf(v[i]) + eps);
}

static int adam_update_cuda(float* params, float* m, float* v, const float* grads, AdamSettings s,
                            int N) {
    if (N == 0)
        return 0;
    // torch.optim.Adam: p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), with the bias
    // corrections bc = 1 - beta^step. Multiplying through by sqrt(bc2) leaves one
    // square root and one division per element.
    // (computed once, on the host, exactly as the CPU twin computes them)
    float bc1 = 1.0f - powf(s.beta1, (float)s.step);
    float bc2_sqrt = sqrtf(1.0f - powf(s.beta2, (float)s.step));
    float step_size = s.learning_rate / bc1 * bc2_sqrt;
    float eps = s.eps * bc2_sqrt;
    adam_update_kernel<<<blocks_for(N), BLOCK_SIZE>>>(params, m, v, grads, s, step_size, eps, N);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// One thread per parameter i.
__global__ void sgd_update_kernel(float* __restrict__ params, float* __restrict__ velocity,
                                  const float* __restrict__ grads, float learning_rate,
                                  float momentum, int N) {
    int i = thread_index();
    if (i >= N)
        return;
    velocity[i] = momentum * velocity[i] + grads[i];
    params[i] -= learning_rate * velocity[i];
}

static int sgd_update_cuda(float* params, float* velocity, const float* grads, float learning_rate,
                           float momentum, int N) {
    if (N == 0)
        return 0;
    sgd_update_kernel<<<blocks_for(N), BLOCK_SIZE>>>(params, velocity, grads, learning_rate,
                                                     momentum, N);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// One thread per element i.
__global__ void add_scaled_kernel(float* __restrict__ sum, const float* __restrict__ x,
                                  float scale, int N) {
    int i = thread_index();
    if (i >= N)
        return;
    sum[i] += scale * x[i];
}

static int add_scaled_cuda(float* sum, const float* x, float scale, int N) {
    if (N == 0)
        return 0;
    add_scaled_kernel<<<blocks_for(N), BLOCK_SIZE>>>(sum, x, scale, N);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// ----------------------------------------------------------------------------

const Kernels kernels_cuda = {
    .name = "cuda",
    .alloc = alloc_cuda,
    .release = release_cuda,
    .upload = upload_cuda,
    .download = download_cuda,
    .zero = zero_cuda,
    .synchronize = synchronize_cuda,
    .gather_batch = gather_batch_cuda,
    .linear_forward = linear_forward_cuda,
    .linear_backward = linear_backward_cuda,
    .relu_forward = relu_forward_cuda,
    .relu_backward = relu_backward_cuda,
    .layernorm_forward = layernorm_forward_cuda,
    .layernorm_backward = layernorm_backward_cuda,
    .mse_forward = mse_forward_cuda,
    .mse_backward = mse_backward_cuda,
    .adam_update = adam_update_cuda,
    .sgd_update = sgd_update_cuda,
    .add_scaled = add_scaled_cuda,
};
