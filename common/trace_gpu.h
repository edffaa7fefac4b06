/*
 * trace_gpu.h - CUDA events that time trace.c's spans on the GPU (common/trace_gpu.cu).
 *
 * A pool of events made once: each span records one at its start and one at its end on
 * the compute stream (device_stream(), device.h), and once the GPU got past them their
 * times are read against a reference event whose host time is known, so that the GPU's
 * times lie on the host clock's axis. A build without CUDA has no GPU to time: these
 * are then never called, and answer that they cannot.
 *
 * APIs: TRACE_GPU_MARKS, trace_gpu_start, trace_gpu_mark, trace_gpu_mark_on, trace_gpu_wait,
 *       trace_gpu_time,
 *       trace_gpu_recycle, trace_gpu_stop.
 */
#ifndef TRACE_GPU_H
#define TRACE_GPU_H

#ifdef __cplusplus
extern "C" {
#endif

// Events in the pool: the spans of one epoch at defaults take about 700.
#define TRACE_GPU_MARKS 16384

#ifdef HAVE_CUDA
// Makes the pool and the reference. Returns 0 or -1.
int trace_gpu_start(void);
// Records the next event of the pool now on the compute stream; its slot, or -1 when the
// pool is used up (until trace_gpu_recycle) or CUDA failed.
int trace_gpu_mark(void);
// The same on stream (a cudaStream_t).
int trace_gpu_mark_on(void* stream);
// Waits until the GPU reached slot's event, and so every event recorded before it (one
// stream). Returns 0 or -1.
int trace_gpu_wait(int slot);
// The host-clock time (timer_seconds) at which the GPU reached slot's event, which it
// must have (trace_gpu_wait); -1.0 if CUDA failed.
double trace_gpu_time(int slot);
// Every slot may be recorded again.
void trace_gpu_recycle(void);
void trace_gpu_stop(void);
#else
static inline int trace_gpu_start(void) {
    return -1;
}
static inline int trace_gpu_mark(void) {
    return -1;
}
static inline int trace_gpu_mark_on(void* stream) {
    (void)stream;
    return -1;
}
static inline int trace_gpu_wait(int slot) {
    (void)slot;
    return -1;
}
static inline double trace_gpu_time(int slot) {
    (void)slot;
    return -1.0;
}
static inline void trace_gpu_recycle(void) {}
static inline void trace_gpu_stop(void) {}
#endif

#ifdef __cplusplus
}
#endif

#endif
