/*
 * trace_gpu.cu - CUDA events for trace.c's spans on the GPU (see trace_gpu.h).
 */
#include <cuda_runtime.h>

#include "device.h" // device_stream
#include "timer.h"
#include "trace_gpu.h"

static cudaEvent_t marks[TRACE_GPU_MARKS];
static int marks_made = 0;
static int next_mark = 0;
static cudaEvent_t reference;
static double reference_host; // timer_seconds when the GPU reached the reference

int trace_gpu_start(void) {
    if (cudaEventCreate(&reference) != cudaSuccess)
        return -1;
    for (; marks_made < TRACE_GPU_MARKS; marks_made++)
        if (cudaEventCreate(&marks[marks_made]) != cudaSuccess)
            return -1;
    // The GPU idles here: the reference's GPU time is the host's once it is reached.
    if (cudaDeviceSynchronize() != cudaSuccess ||
        cudaEventRecord(reference, device_stream()) != cudaSuccess ||
        cudaEventSynchronize(reference) != cudaSuccess)
        return -1;
    reference_host = timer_seconds();
    next_mark = 0;
    return 0;
}

int trace_gpu_mark_on(void* stream) {
    if (next_mark >= marks_made ||
        cudaEventRecord(marks[next_mark], (cudaStream_t)stream) != cudaSuccess)
        return -1;
    return next_mark++;
}

int trace_gpu_mark(void) {
    return trace_gpu_mark_on(device_stream());
}

int trace_gpu_wait(int slot) {
    return slot >= 0 && slot < marks_made && cudaEventSynchronize(marks[slot]) == cudaSuccess ? 0
                                                                                              : -1;
}

double trace_gpu_time(int slot) {
    float ms = 0.0f;
    if (slot < 0 || slot >= marks_made ||
        cudaEventElapsedTime(&ms, reference, marks[slot]) != cudaSuccess)
        return -1.0;
    return reference_host + 1e-3 * (double)ms;
}

void trace_gpu_recycle(void) {
    next_mark = 0;
}

void trace_gpu_stop(void) {
    for (int i = 0; i < marks_made; i++)
        cudaEventDestroy(marks[i]);
    cudaEventDestroy(reference);
    marks_made = 0;
    next_mark = 0;
}
