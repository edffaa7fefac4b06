/*
 * device.h - which device a process trains on: a GPU if asked for or found, else the CPU.
 *
 * "--device auto" is PyTorch's `cuda if torch.cuda.is_available() else cpu`.
 * On a machine without a GPU driver the CUDA runtime answers the device count
 * with an error rather than 0; any error there means "no GPU". A build without
 * CUDA (no nvcc, or make NO_CUDA=1) knows no GPU at all.
 *
 * APIs: Device, device_gpu_count, device_gpu_count_forked, device_gpus_for_workers, device_open,
 *       device_describe, device_stream (builds with CUDA).
 */
#ifndef DEVICE_H
#define DEVICE_H

#include <stddef.h>

#include "kernels.h"

#ifdef HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DEVICE_CPU, DEVICE_CUDA } DeviceKind;

typedef struct {
    DeviceKind kind;
    int gpu_index;        // the CUDA device number (DEVICE_CUDA only)
    char name[256];       // "NVIDIA H100 80GB HBM3", or the CPU's model name
    double memory_gib;    // GPU memory (DEVICE_CUDA only)
    int capability_major; // compute capability (DEVICE_CUDA only)
    int capability_minor;
    const Kernels* kernels;
} Device;

// How many GPUs this process can use: 0 without a driver, a GPU, or CUDA in the build.
// Where the CUDA runtime fails, its reason is kept for the error of "--device cuda".
int device_gpu_count(void);
// The same, asked in a short-lived child process, so that this process does not
// touch CUDA before it forks its workers.
int device_gpu_count_forked(void);

// How many GPUs the workers of a process that has not touched CUDA can use, with
// request "auto", "cpu" (0) or "cuda". Returns the count, or -1 with the reason in
// why when "cuda" is asked for and there is none.
int device_gpus_for_workers(const char* request, char* why, size_t why_len);

// request is "auto", "cpu" or "cuda"; gpu_index picks among several GPUs.
// Returns 0, or -1 with a one-line reason in why (for "cuda" without a GPU).
int device_open(Device* d, const char* request, int gpu_index, char* why, size_t why_len);

// "cuda:0 (NVIDIA H100 80GB HBM3, 79.1 GiB, compute capability 9.0)" or "cpu (AMD EPYC)".
void device_describe(const Device* d, char* out, size_t out_len);

#ifdef HAVE_CUDA
// The one stream that the model's work runs on, in order: every kernel, copy and graph of
// kernels_cuda and the GPU step (common/fast_step.h); collectives wait for it with an event
// (collective.c). Created at the first call, on the device current then (one per process:
// each worker uses one GPU). A blocking stream, so that work on the legacy default stream
// (a cudaMemset elsewhere) still waits for it. Should it fail to be created, the reason is
// reported once and the legacy default stream, which orders work just as well, is used.
cudaStream_t device_stream(void);
#endif

#ifdef __cplusplus
}
#endif

#endif
