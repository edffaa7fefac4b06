/*
 * kernels_cuda.cu - the model's computations as CUDA kernels: the CPU twins, in parallel.
 *
 * Each kernel is the twin of a function in kernels_cpu.c and keeps its
 * comments, so that a diff of the two files shows only the parallelisation.
 * Most kernels give one thread one output element, and that thread sums one
 * term after another, as the CPU twin's loop reads (for the linear layer, the
 * reference loops, linear_forward_naive and linear_backward_naive); LayerNorm
 * gives a row to a warp, whose lanes add their partial sums in a fixed order. No
 * kernel uses atomics, so every run gives the same bits. The two
 * devices agree to rounding, not bit for bit: the CPU keeps partial sums in
 * vector lanes in a few places, each compiler fuses multiplies and adds (FMA)
 * in its own places, and the CPU flushes subnormal floats to zero, which these
 * kernels do not (nvcc flushes only with -ftz=true, which the Makefile leaves off).
 * Each launcher has its CPU twin's signature: it launches on the model's stream
 * (device_stream(), common/device.h), checks the launch and returns 0, or -1 after
 * reporting an error. Errors inside a kernel surface at the next synchronize or copy.
 * What these kernels and the fused step share is in kernels_cuda.cuh.
 *
 * Shapes: B batch rows, C input features, OC output features, N elements.
 * APIs: kernels_cuda; from CUDA: cudaMalloc, cudaMemsetAsync, cudaMemcpyAsync, cudaFree,
 *       cudaStreamSynchronize, cudaDeviceSynchronize, cudaGetLastError, __global__,
 *       <<<grid, block, shared, stream>>>, __shared__, __syncthreads, __shfl_xor_sync.
 */
#include <cuda_runtime.h>
#include <math.h>

#include "check.h"
#include "device.h"
#include "kernels.h"
#include "kernels_cuda.cuh"

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

// Copies go on the model's stream, after the kernels queued before them; upload and
// download return once the copy is done, as the CPU's memcpy does.
static int upload_cuda(void* device_dst, const void* host_src, size_t bytes) {
    CUDA_CHECK(
        cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice, device_stream()));
    CUDA_CHECK(cudaStreamSynchronize(device_stream()));
    return 0;
}

static int download_cuda(void* host_dst, const void* device_src, size_t bytes) {
    CUDA_CHECK(
        cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, device_stream()));
    CUDA_CHECK(cudaStreamSynchronize(device_stream()));
    return 0;
}

static int zero_cuda(void* ptr, size_t bytes) {
    CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, device_stream()));
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
    long long b = thread_index();
    if (b >= B)
        return;
    x[b] = data_x[indices[b]];
    y[b] = data_y[indices[b]];
}

static int gather_batch_cuda(float* x, float* y, const float* data_x, const float* data_y,
                             const int* indices, int B) {
    if (B == 0)
        return 0;
    gather_batch_kernel<<<blocks_for(B), BLOCK_SIZE, 0, device_stream()>>>(x, y, data_x, data_y,
                                                                           indices, B);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// ----------------------------------------------------------------------------
// linear layer

// One thread per output element (b, o), a block per tile of them (linear_forward_tile).
__global__ void linear_forward_kernel(float* __restrict__ out, const float* __restrict__ inp,
                                      const float* __restrict__ w, const float* __restrict__ bias,
                                      int B, int C, int OC) {
    linear_forward_tile(out, inp, w, bias, B, C, OC, threadIdx.x, threadIdx.y, blockIdx.x,
                        blockIdx.y);
}

static int linear_forward_cuda(float* out, const float* inp, const float* w, const float* bias,
                               int B, int C, int OC) {
    if ((long long)B * OC == 0)
        return 0;
    // rows of tiles along x, which allows 2^31 - 1 blocks; columns (OC <= 4096) along y
    dim3 grid((B + LINEAR_TILE - 1) / LINEAR_TILE, (OC + LINEAR_TILE - 1) / LINEAR_TILE);
    dim3 block(LINEAR_TILE, LINEAR_TILE);
    linear_forward_kernel<<<grid, block, 0, device_stream()>>>(out, inp, w, bias, B, C, OC);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// One thread per bias o.
__global__ void linear_backward_dbias_kernel(float* __restrict__ dbias,
                                             const float* __restrict__ dout, int B, int OC) {
    long long o = thread_index();
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
    long long idx = thread_index();
    if (idx >= (long long)OC * C)
        return;
    int o = (int)(idx / C), i = (int)(idx % C);
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
    long long idx = thread_index();
    if (idx >= (long long)B * C)
        return;
    long long b = idx / C;
    int i = (int)(idx % C);
    // dinp[b][i] = sum over o of dout[b][o] * w[o][i]
    float sum = 0.0f;
    for (int o = 0; o < OC; o++)
        sum += dout[b * OC + o] * w[(size_t)o * C + i];
    dinp[b * C + i] = sum;
}

static int linear_backward_cuda(float* dinp, float* dw, float* dbias, const float* dout,
                                const float* inp, const float* w, int B, int C, int OC) {
    // Three kernels, one per gradient: each thread owns the element it writes,
    // so no two threads ever add to the same place.
    cudaStream_t stream = device_stream();
    if (dw != NULL && OC > 0) {
        linear_backward_dbias_kernel<<<blocks_for(OC), BLOCK_SIZE, 0, stream>>>(dbias, dout, B, OC);
        CUDA_CHECK(cudaGetLastError());
    }
    if (dw != NULL && (long long)OC * C > 0) {
        linear_backward_dw_kernel<<<blocks_for((long long)OC * C), BLOCK_SIZE, 0, stream>>>(
            dw, dout, inp, B, C, OC);
        CUDA_CHECK(cudaGetLastError());
    }
    if (dinp != NULL && (long long)B * C > 0) {
        linear_backward_dinp_kernel<<<blocks_for((long long)B * C), BLOCK_SIZE, 0, stream>>>(
            dinp, dout, w, B, C, OC);
        CUDA_CHECK(cudaGetLastError());
    }
    return 0;
}

// ----------------------------------------------------------------------------
// ReLU

// One thread per element i, here and in every elementwise kernel below.
__global__ void relu_forward_kernel(float* out, const float* inp, int N) {
    long long i = thread_index();
    if (i < N)
        out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

static int relu_forward_cuda(float* out, const float* inp, int N) {
    if (N == 0)
        return 0;
    relu_forward_kernel<<<blocks_for(N), BLOCK_SIZE, 0, device_stream()>>>(out, inp, N);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

__global__ void relu_backward_kernel(float* dinp, const float* dout, const float* out, int N) {
    long long i = thread_index();
    if (i < N)
        dinp[i] = out[i] > 0.0f ? dout[i] : 0.0f;
}

static int relu_backward_cuda(float* dinp, const float* dout, const float* out, int N) {
    if (N == 0)
        return 0;
    relu_backward_kernel<<<blocks_for(N), BLOCK_SIZE, 0, device_stream()>>>(dinp, dout, out, N);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// ----------------------------------------------------------------------------
// LayerNorm over the C features of each row

// One warp per row b (layernorm_row): its 32 lanes read the row together, neighbouring
// lanes neighbouring features, and add their partial sums in a fixed order. A warp's
// lanes share the row, so a whole warp stops at the last row.
__global__ void layernorm_forward_kernel(float* __restrict__ out, float* __restrict__ mean,
                                         float* __restrict__ rstd, const float* __restrict__ inp,
                                         const float* __restrict__ gamma,
                                         const float* __restrict__ beta, int B, int C) {
    long long b = thread_index() / WARP_SIZE;
    int lane = threadIdx.x % WARP_SIZE;
    if (b >= B)
        return;
    float m, s;
    layernorm_row(out + b * C, &m, &s, inp + b * C, gamma, beta, C, lane);
    if (lane == 0) {
        mean[b] = m;
        rstd[b] = s;
    }
}

static int layernorm_forward_cuda(float* out, float* mean, float* rstd, const float* inp,
                                  const float* gamma, const float* beta, int B, int C) {
    if (B == 0)
        return 0;
    layernorm_forward_kernel<<<blocks_for((long long)B * WARP_SIZE), BLOCK_SIZE, 0,
                               device_stream()>>>(out, mean, rstd, inp, gamma, beta, B, C);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// The CPU twin adds every row's share to dgamma and dbeta as it goes; here a
// row kernel writes dinp and a column kernel sums dgamma and dbeta over the rows.

// One warp per row b (layernorm_backward_row).
__global__ void layernorm_backward_dinp_kernel(float* __restrict__ dinp,
                                               const float* __restrict__ dout,
                                               const float* __restrict__ inp,
                                               const float* __restrict__ mean,
                                               const float* __restrict__ rstd,
                                               const float* __restrict__ gamma, int B, int C) {
    long long b = thread_index() / WARP_SIZE;
    if (b >= B)
        return;
    layernorm_backward_row(dinp + b * C, dout + b * C, inp + b * C, mean[b], rstd[b], gamma, C,
                           threadIdx.x % WARP_SIZE);
}

// One thread per feature i, summing over the batch rows b in order.
__global__ void layernorm_backward_dparams_kernel(float* __restrict__ dgamma,
                                                  float* __restrict__ dbeta,
                                                  const float* __restrict__ dout,
                                                  const float* __restrict__ inp,
                                                  const float* __restrict__ mean,
                                                  const float* __restrict__ rstd, int B, int C) {
    long long i = thread_index();
    if (i < C)
        layernorm_dparams_column(dgamma + i, dbeta + i, dout, inp, mean, rstd, (int)i, B, C);
}

static int layernorm_backward_cuda(float* dinp, float* dgamma, float* dbeta, const float* dout,
                                   const float* inp, const float* mean, const float* rstd,
                                   const float* gamma, int B, int C) {
    if (C == 0)
        return 0;
    cudaStream_t stream = device_stream();
    layernorm_backward_dparams_kernel<<<blocks_for(C), BLOCK_SIZE, 0, stream>>>(
        dgamma, dbeta, dout, inp, mean, rstd, B, C);
    CUDA_CHECK(cudaGetLastError());
    if (B > 0) {
        layernorm_backward_dinp_kernel<<<blocks_for((long long)B * WARP_SIZE), BLOCK_SIZE, 0,
                                         stream>>>(dinp, dout, inp, mean, rstd, gamma, B, C);
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
    mse_forward_kernel<<<1, BLOCK_SIZE, 0, device_stream()>>>(loss, pred, target, scale, B);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

__global__ void mse_backward_kernel(float* dpred, const float* pred, const float* target, int B) {
    long long b = thread_index();
    if (b < B)
        dpred[b] = 2.0f * (pred[b] - target[b]) / B;
}

static int mse_backward_cuda(float* dpred, const float* pred, const float* target, int B) {
    if (B == 0)
        return 0;
    mse_backward_kernel<<<blocks_for(B), BLOCK_SIZE, 0, device_stream()>>>(dpred, pred, target, B);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// ----------------------------------------------------------------------------
// optimizers

// One thread per parameter i (adam_element).
__global__ void adam_update_kernel(float* __restrict__ params, float* __restrict__ m,
                                   float* __restrict__ v, const float* __restrict__ grads,
                                   AdamSettings s, float step_size, float eps, int N) {
    long long i = thread_index();
    if (i < N)
        adam_element(params, m, v, grads, s.beta1, s.beta2, step_size, eps, i);
}

static int adam_update_cuda(float* params, float* m, float* v, const float* grads, AdamSettings s,
                            int N) {
    if (N == 0)
        return 0;
    float step_size, eps;
    adam_scalars(s, &step_size, &eps);
    adam_update_kernel<<<blocks_for(N), BLOCK_SIZE, 0, device_stream()>>>(params, m, v, grads, s,
                                                                          step_size, eps, N);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// One thread per parameter i (sgd_element).
__global__ void sgd_update_kernel(float* __restrict__ params, float* __restrict__ velocity,
                                  const float* __restrict__ grads, float learning_rate,
                                  float momentum, int N) {
    long long i = thread_index();
    if (i < N)
        sgd_element(params, velocity, grads, learning_rate, momentum, i);
}

static int sgd_update_cuda(float* params, float* velocity, const float* grads, float learning_rate,
                           float momentum, int N) {
    if (N == 0)
        return 0;
    sgd_update_kernel<<<blocks_for(N), BLOCK_SIZE, 0, device_stream()>>>(
        params, velocity, grads, learning_rate, momentum, N);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

// One thread per element i.
__global__ void add_scaled_kernel(float* __restrict__ sum, const float* __restrict__ x, float scale,
                                  int N) {
    long long i = thread_index();
    if (i >= N)
        return;
    sum[i] += scale * x[i];
}

static int add_scaled_cuda(float* sum, const float* x, float scale, int N) {
    if (N == 0)
        return 0;
    add_scaled_kernel<<<blocks_for(N), BLOCK_SIZE, 0, device_stream()>>>(sum, x, scale, N);
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
