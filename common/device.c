/*
 * device.c - device detection and selection (see device.h).
 */
#include "device.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

#define DEVICE_QUERY_TIMEOUT_MS 60000

#ifdef HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

// Why the last GPU query of this process found none: "cudaGetDeviceCount: REASON" when the
// runtime failed, else "" (no CUDA in the build, or a driver that reports 0 GPUs).
static char gpu_query_error[200];

int device_gpu_count(void) {
    gpu_query_error[0] = '\0';
#ifdef HAVE_CUDA
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        snprintf(gpu_query_error, sizeof gpu_query_error, "cudaGetDeviceCount: %s",
                 cudaGetErrorString(err));
        cudaGetLastError(); // clear the error so later calls do not report it again
        return 0;
    }
    return count;
#else
    return 0;
#endif
}

// What the child of device_gpu_count_forked answers.
typedef struct {
    int count;
    char error[sizeof gpu_query_error];
} GpuQuery;

int device_gpu_count_forked(void) {
    int fds[2];
    if (pipe(fds) != 0)
        return 0;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        GpuQuery q = {.count = device_gpu_count()};
        memcpy(q.error, gpu_query_error, sizeof q.error);
        _exit(write(fds[1], &q, sizeof q) == sizeof q ? 0 : 1);
    }
    close(fds[1]);
    // A driver that hangs must not hang us: wait a minute at most.
    int ready;
    GpuQuery q = {0};
    struct pollfd p = {.fd = fds[0], .events = POLLIN};
    while ((ready = poll(&p, 1, DEVICE_QUERY_TIMEOUT_MS)) < 0 && errno == EINTR)
        ;
    if (pid < 0 || ready <= 0 || read(fds[0], &q, sizeof q) != sizeof q) {
        if (pid > 0 && ready == 0)
            rank_log("warning: the GPU query did not answer within %d s: using no GPU",
                     DEVICE_QUERY_TIMEOUT_MS / 1000);
        q = (GpuQuery){0};
    }
    q.error[sizeof q.error - 1] = '\0';
    memcpy(gpu_query_error, q.error, sizeof gpu_query_error);
    int count = q.count;
    close(fds[0]);
    if (pid > 0 && ready == 0) {
        kill(pid, SIGKILL); // it may stay stuck in the driver: do not wait for it
        waitpid(pid, NULL, WNOHANG);
    } else if (pid > 0)
        waitpid(pid, NULL, 0);
    return count;
}

// The "model name" line of /proc/cpuinfo, or "unknown CPU".
static void cpu_model_name(char* out, size_t out_len) {
    snprintf(out, out_len, "unknown CPU");
    FILE* f = fopen("/proc/cpuinfo", "r");
    if (f == NULL)
        return;
    char line[512];
    while (fgets(line, sizeof line, f) != NULL) {
        char* colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon != NULL) {
            snprintf(out, out_len, "%s", colon + 2);
            out[strcspn(out, "\n")] = '\0';
            break;
        }
    }
    fclose(f);
}

#ifdef HAVE_CUDA
static int open_gpu(Device* d, int gpu_index, char* why, size_t why_len) {
    struct cudaDeviceProp prop;
    cudaError_t err = cudaSetDevice(gpu_index);
    if (err == cudaSuccess)
        err = cudaGetDeviceProperties(&prop, gpu_index);
    if (err != cudaSuccess) {
        snprintf(why, why_len, "cannot use GPU %d: %s", gpu_index, cudaGetErrorString(err));
        return -1;
    }
    d->kind = DEVICE_CUDA;
    d->gpu_index = gpu_index;
    snprintf(d->name, sizeof d->name, "%s", prop.name);
    d->memory_gib = (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0);
    d->capability_major = prop.major;
    d->capability_minor = prop.minor;
    d->kernels = &kernels_cuda;
    return 0;
}
#endif

// Why "--device cuda" cannot be had here: no GPU, or no CUDA in this build.
static void device_explain_no_gpu(char* why, size_t why_len) {
#ifdef HAVE_CUDA
    snprintf(why, why_len,
             "--device cuda: no usable GPU was found (%s%sis the NVIDIA driver loaded? "
             "try nvidia-smi), use --device cpu or auto",
             gpu_query_error, gpu_query_error[0] != '\0' ? "; " : "");
#else
    snprintf(why, why_len,
             "--device cuda: this build has no CUDA support (built without nvcc, "
             "or with NO_CUDA=1), use --device cpu or auto");
#endif
}

int device_gpus_for_workers(const char* request, char* why, size_t why_len) {
    int gpus = strcmp(request, "cpu") == 0 ? 0 : device_gpu_count_forked();
    if (strcmp(request, "cuda") == 0 && gpus == 0) {
        device_explain_no_gpu(why, why_len);
        return -1;
    }
    return gpus;
}

int device_open(Device* d, const char* request, int gpu_index, char* why, size_t why_len) {
    memset(d, 0, sizeof *d);
    int gpus = strcmp(request, "cpu") == 0 ? 0 : device_gpu_count();
    if (strcmp(request, "cuda") == 0 && gpus == 0) {
        device_explain_no_gpu(why, why_len);
        return -1;
    }
    if (gpus > 0 && gpu_index >= gpus) {
        snprintf(why, why_len, "GPU %d requested but only %d found", gpu_index, gpus);
        return -1;
    }
#ifdef HAVE_CUDA
    if (gpus > 0)
        return open_gpu(d, gpu_index, why, why_len);
#endif
    d->kind = DEVICE_CPU;
    cpu_model_name(d->name, sizeof d->name);
    d->kernels = &kernels_cpu;
    return 0;
}

void device_describe(const Device* d, char* out, size_t out_len) {
    if (d->kind == DEVICE_CUDA)
        snprintf(out, out_len, "cuda:%d (%s, %.1f GiB, compute capability %d.%d)", d->gpu_index,
                 d->name, d->memory_gib, d->capability_major, d->capability_minor);
    else
        snprintf(out, out_len, "cpu (%s)", d->name);
}

#ifdef HAVE_CUDA
static cudaStream_t model_stream;
static pthread_once_t model_stream_once = PTHREAD_ONCE_INIT;

// Creates model_stream, or reports why it cannot and leaves the legacy default stream.
static void create_model_stream(void) {
    cudaError_t err = cudaStreamCreate(&model_stream);
    if (err != cudaSuccess) {
        check_report(__FILE__, __LINE__, "cudaStreamCreate(&model_stream)",
                     cudaGetErrorString(err));
        model_stream = cudaStreamLegacy;
    }
}

cudaStream_t device_stream(void) {
    // Once, even if the compute thread and lesson 04's communication thread ask together.
    pthread_once(&model_stream_once, create_model_stream);
    return model_stream;
}
#endif
