/*
 * cuda_runtime.h - CUDA on the CPU: the part of CUDA's runtime and language that the project
 * uses, so that its CUDA sources build and run on a machine without a GPU (make cuda-on-cpu).
 *
 * A stand-in, not a GPU: it runs the real kernels, one lightweight thread (a ucontext fiber)
 * per CUDA thread, the blocks of a grid one after another, and the host code around them, so
 * that tests/gpu checks the CUDA code against the CPU twin on every machine. What it checks:
 *   - every index and every sum (a wrong one gives a wrong result, which the tests compare);
 *   - every barrier: a block's threads run until they block, in turn, in the opposite turn
 *     on every other block, so a missing __syncthreads lets a thread read what another has
 *     not written yet (or overwrite what it has not read); a __syncthreads that not every
 *     thread reaches, or a shuffle that not every lane named by its mask reaches, is
 *     reported and fails the launch (a GPU would hang or read garbage);
 *   - launch limits (threads per block and grid sizes), dynamic shared memory beyond 48 KiB
 *     without cudaFuncSetAttribute, a pointer argument that is not device memory, copies
 *     whose direction does not match their pointers, and graph capture's rules (a synchronous
 *     call, or the legacy stream, while a stream is captured invalidates the capture; what a
 *     graph replays is what was captured, arguments and all);
 *   - with make cuda-on-cpu ASAN=1 (then run build/cuda-on-cpu-asan/tests/gpu/test_* --jobs 1),
 *     every out-of-bounds access to device memory or to dynamic shared memory.
 * What it does not check: timing (never quote it as a GPU figure), the GPU's memory model
 * (work runs when it is queued, so a missing stream synchronization goes unseen), the
 * compiler's fused multiply-adds and other last-bit differences (the tests' tolerances),
 * registers, and NCCL (the build has none).
 *
 * In C, only the runtime's functions and types; in C++ (the .cu files, which the Makefile
 * rewrites for g++: K<<<grid, block, shared, stream>>>(args) becomes
 * cuda_on_cpu_launch(K, grid, block, shared, stream)(args), extern __shared__ T name[]
 * becomes T* name = (T*)cuda_on_cpu_dynamic_shared()), also the language's names.
 */
#ifndef CUDA_ON_CPU_RUNTIME_H
#define CUDA_ON_CPU_RUNTIME_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorIllegalState = 401,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchFailure = 719,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorStreamCaptureImplicit = 906,
} cudaError_t;

typedef struct CudaOnCpuStream* cudaStream_t;
typedef struct CudaOnCpuEvent* cudaEvent_t;
typedef struct CudaOnCpuGraph* cudaGraph_t;
typedef struct CudaOnCpuGraph* cudaGraphExec_t;

#define cudaStreamLegacy ((cudaStream_t)0x1)
#define cudaStreamNonBlocking 0x1
#define cudaEventDisableTiming 0x2

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
};

enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
};

enum cudaDeviceAttr {
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    int major, minor;
};

cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* prop, int device);
cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaGetLastError(void);
const char* cudaGetErrorString(cudaError_t err);

cudaError_t cudaMalloc(void** ptr, size_t bytes);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMemset(void* ptr, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, enum cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t stream);

cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags);

cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph,
                                 unsigned long long flags);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);

#ifdef __cplusplus
}

// ----------------------------------------------------------------------------
// the language, for the .cu files

#include <functional>
#include <type_traits>

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The running CUDA thread's coordinates (set by the scheduler before it resumes a thread).
struct CudaOnCpuIndex {
    unsigned x, y, z;
};
extern CudaOnCpuIndex cuda_on_cpu_thread_idx, cuda_on_cpu_block_idx, cuda_on_cpu_block_dim,
    cuda_on_cpu_grid_dim;
#define threadIdx cuda_on_cpu_thread_idx
#define blockIdx cuda_on_cpu_block_idx
#define blockDim cuda_on_cpu_block_dim
#define gridDim cuda_on_cpu_grid_dim

#define __global__
#define __device__ __attribute__((unused)) // nvcc does not warn of an unused device function
#define __host__
#define __shared__ static // one copy for a block's threads; the blocks run one at a time
#define __launch_bounds__(threads)

void cuda_on_cpu_syncthreads(void);
float cuda_on_cpu_shfl_xor(unsigned mask, float value, int lane_mask);
void* cuda_on_cpu_dynamic_shared(void);
#define __syncthreads() cuda_on_cpu_syncthreads()
#define __shfl_xor_sync(mask, value, lane_mask) cuda_on_cpu_shfl_xor((mask), (value), (lane_mask))

// A kernel's launch: its name, configuration and the pointers it was given (each must be
// device memory), then its threads' work; run now, or recorded by a stream being captured.
bool cuda_on_cpu_is_device_pointer(const void* ptr);
void cuda_on_cpu_run(const void* kernel, const char* name, dim3 grid, dim3 block, size_t shared,
                     cudaStream_t stream, const void* bad_pointer, std::function<void()> thread);

template <typename T> const void* cuda_on_cpu_host_pointer(const T& arg) {
    if constexpr (std::is_pointer_v<T>)
        if (arg != nullptr && !cuda_on_cpu_is_device_pointer((const void*)arg))
            return (const void*)arg;
    return nullptr;
}

template <typename... P> struct CudaOnCpuLaunch {
    void (*kernel)(P...);
    const char* name;
    dim3 grid, block;
    size_t shared;
    cudaStream_t stream;
    void operator()(P... args) const {
        const void* bad = nullptr;
        ((bad = bad != nullptr ? bad : cuda_on_cpu_host_pointer(args)), ...);
        void (*k)(P...) = kernel;
        cuda_on_cpu_run((const void*)kernel, name, grid, block, shared, stream, bad,
                        [=]() { k(args...); });
    }
};

template <typename... P>
CudaOnCpuLaunch<P...> cuda_on_cpu_launch_named(void (*kernel)(P...), const char* name, dim3 grid,
                                               dim3 block, size_t shared = 0,
                                               cudaStream_t stream = nullptr) {
    return CudaOnCpuLaunch<P...>{kernel, name, grid, block, shared, stream};
}
#define cuda_on_cpu_launch(kernel, ...) cuda_on_cpu_launch_named(kernel, #kernel, __VA_ARGS__)

cudaError_t cuda_on_cpu_func_set_attribute(const void* kernel, enum cudaFuncAttribute attr,
                                           int value);
template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), enum cudaFuncAttribute attr, int value) {
    return cuda_on_cpu_func_set_attribute((const void*)kernel, attr, value);
}
#endif

#endif
