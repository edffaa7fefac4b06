/*
 * cuda_on_cpu.cpp - CUDA on the CPU (cuda_runtime.h says what it is and what it checks): the
 * runtime's calls, and the scheduler that runs a kernel's threads.
 *
 * One device, "memory" from the heap (filled with NaN bytes, as a GPU's is not zeroed),
 * every call run when it is made, in order: a stream only says where an operation goes,
 * which matters while it is captured into a graph. A fault that a GPU would show as a hang,
 * an illegal address or garbage is printed as one line "cuda-on-cpu: ..." and makes every
 * later call fail with cudaErrorLaunchFailure, as a lost CUDA context does.
 */
#include "cuda_runtime.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>

#include <map>
#include <mutex>
#include <vector>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// What the stand-in says it is (the banner's device), and its limits: those of an H200 where
// the code depends on them, a smaller memory so that a test of a huge launch skips.
#define DEVICE_NAME "CUDA on the CPU (a stand-in, not a GPU)"
#define DEVICE_MEMORY (4ull << 30)
#define SHARED_DEFAULT_LIMIT (48 * 1024)
#define SHARED_OPTIN_LIMIT (227 * 1024)
#define MAX_BLOCK_THREADS 1024
#define WARP_LANES 32
#define FIBER_STACK_BYTES (256 * 1024)

CudaOnCpuIndex cuda_on_cpu_thread_idx, cuda_on_cpu_block_idx, cuda_on_cpu_block_dim,
    cuda_on_cpu_grid_dim;

// ----------------------------------------------------------------------------
// errors

static std::recursive_mutex runtime_lock; // one call at a time, from any host thread
static thread_local cudaError_t last_error = cudaSuccess;
static cudaError_t sticky_error = cudaSuccess; // a kernel's fault: the context is lost

static cudaError_t fail(cudaError_t err) {
    last_error = err;
    return err;
}

// A fault of the code under test: said once, and every later call fails.
static void fault(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static void fault(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("cuda-on-cpu: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (sticky_error == cudaSuccess)
        sticky_error = cudaErrorLaunchFailure;
    last_error = sticky_error;
}

#define BEGIN_CALL()                                                                               \
    std::lock_guard<std::recursive_mutex> guard(runtime_lock);                                     \
    if (sticky_error != cudaSuccess)                                                               \
    return fail(sticky_error)

cudaError_t cudaGetLastError(void) {
    cudaError_t err = sticky_error != cudaSuccess ? sticky_error : last_error;
    last_error = cudaSuccess;
    return err;
}

const char* cudaGetErrorString(cudaError_t err) {
    switch (err) {
    case cudaSuccess:
        return "no error";
    case cudaErrorInvalidValue:
        return "invalid argument";
    case cudaErrorMemoryAllocation:
        return "out of memory";
    case cudaErrorInvalidConfiguration:
        return "invalid configuration argument";
    case cudaErrorInvalidDevice:
        return "invalid device ordinal";
    case cudaErrorNoDevice:
        return "no CUDA-capable device is detected";
    case cudaErrorInvalidResourceHandle:
        return "invalid resource handle";
    case cudaErrorIllegalState:
        return "the operation cannot be performed in the present state";
    case cudaErrorNotReady:
        return "device not ready";
    case cudaErrorIllegalAddress:
        return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure:
        return "unspecified launch failure";
    case cudaErrorStreamCaptureUnsupported:
        return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
        return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureImplicit:
        return "operation would make the legacy stream depend on a capturing blocking stream";
    }
    return "unrecognized error code";
}

// ----------------------------------------------------------------------------
// the device

cudaError_t cudaGetDeviceCount(int* count) {
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
    BEGIN_CALL();
    return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice);
}

cudaError_t cudaGetDevice(int* device) {
    *device = 0;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* prop, int device) {
    if (device != 0)
        return fail(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "%s", DEVICE_NAME);
    prop->totalGlobalMem = DEVICE_MEMORY;
    prop->major = 9; // the architecture whose limits it keeps
    prop->minor = 0;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
    if (device != 0)
        return fail(cudaErrorInvalidDevice);
    if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin)
        return fail(cudaErrorInvalidValue);
    *value = SHARED_OPTIN_LIMIT;
    return cudaSuccess;
}

// ----------------------------------------------------------------------------
// streams and capture

struct CudaOnCpuGraph {
    std::vector<std::function<void()>> nodes;
};

struct CudaOnCpuStream {
    CudaOnCpuGraph* capture; // the graph being captured, or NULL
    bool capture_broken;     // a prohibited call during the capture: it must fail
};

static thread_local CudaOnCpuStream* captured_here; // this thread's capture, if any

static bool is_legacy(cudaStream_t s) {
    return s == nullptr || s == cudaStreamLegacy;
}

// A call that a capturing thread may not make (it would wait for, or depend on, work that is
// only being recorded): the capture breaks, and the call fails.
static bool refused_while_capturing(const char* call) {
    if (captured_here == nullptr)
        return false;
    fprintf(stderr, "cuda-on-cpu: %s while a stream is captured: the capture is invalidated\n",
            call);
    captured_here->capture_broken = true;
    fail(cudaErrorStreamCaptureUnsupported);
    return true;
}

// Runs op on stream s now, or records it into the graph that s is capturing.
static cudaError_t enqueue(cudaStream_t s, const char* what, std::function<void()> op) {
    if (is_legacy(s) && captured_here != nullptr) {
        fprintf(stderr, "cuda-on-cpu: %s on the legacy stream while a stream is captured\n", what);
        captured_here->capture_broken = true;
        return fail(cudaErrorStreamCaptureImplicit);
    }
    if (!is_legacy(s) && s->capture != nullptr)
        s->capture->nodes.push_back(std::move(op));
    else
        op();
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
    return cudaStreamCreateWithFlags(stream, 0);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
    (void)flags; // work runs when queued: blocking or not is the same here
    BEGIN_CALL();
    *stream = new CudaOnCpuStream{nullptr, false};
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    BEGIN_CALL();
    if (is_legacy(stream) || stream->capture != nullptr)
        return fail(cudaErrorInvalidResourceHandle);
    delete stream;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    (void)stream;
    BEGIN_CALL();
    return refused_while_capturing("cudaStreamSynchronize") ? last_error : cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
    (void)stream;
    BEGIN_CALL();
    return refused_while_capturing("cudaStreamQuery") ? last_error : cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
    BEGIN_CALL();
    return refused_while_capturing("cudaDeviceSynchronize") ? last_error : cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode) {
    BEGIN_CALL();
    if (is_legacy(stream) || stream->capture != nullptr || captured_here != nullptr)
        return fail(cudaErrorIllegalState);
    if (mode != cudaStreamCaptureModeThreadLocal)
        return fail(cudaErrorInvalidValue); // only the mode the project uses is emulated
    stream->capture = new CudaOnCpuGraph;
    stream->capture_broken = false;
    captured_here = stream;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
    *graph = nullptr;
    std::lock_guard<std::recursive_mutex> guard(runtime_lock);
    if (is_legacy(stream) || stream->capture == nullptr || captured_here != stream)
        return fail(cudaErrorIllegalState);
    captured_here = nullptr;
    CudaOnCpuGraph* g = stream->capture;
    stream->capture = nullptr;
    if (stream->capture_broken || sticky_error != cudaSuccess) {
        delete g;
        return fail(sticky_error != cudaSuccess ? sticky_error : cudaErrorStreamCaptureInvalidated);
    }
    *graph = g;
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph,
                                 unsigned long long flags) {
    (void)flags;
    BEGIN_CALL();
    if (graph == nullptr)
        return fail(cudaErrorInvalidValue);
    *exec =
        new CudaOnCpuGraph(*graph); // the nodes as captured: later edits of graph do not reach it
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
    BEGIN_CALL();
    if (exec == nullptr)
        return fail(cudaErrorInvalidValue);
    return enqueue(stream, "cudaGraphLaunch", [exec]() {
        for (const std::function<void()>& node : exec->nodes)
            if (sticky_error == cudaSuccess)
                node();
    });
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    delete graph;
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    delete exec;
    return cudaSuccess;
}

// ----------------------------------------------------------------------------
// events

struct CudaOnCpuEvent {
    bool timing;
    bool recorded;
    struct timespec at;
};

cudaError_t cudaEventCreate(cudaEvent_t* event) {
    return cudaEventCreateWithFlags(event, 0);
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags) {
    BEGIN_CALL();
    *event = new CudaOnCpuEvent{(flags & cudaEventDisableTiming) == 0, false, {}};
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    delete event;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    BEGIN_CALL();
    return enqueue(stream, "cudaEventRecord", [event]() {
        clock_gettime(CLOCK_MONOTONIC, &event->at);
        event->recorded = true;
    });
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    (void)event;
    BEGIN_CALL();
    return refused_while_capturing("cudaEventSynchronize") ? last_error : cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
    BEGIN_CALL();
    if (!start->timing || !end->timing)
        return fail(cudaErrorInvalidResourceHandle);
    if (!start->recorded || !end->recorded)
        return fail(cudaErrorNotReady);
    *ms = (float)((double)(end->at.tv_sec - start->at.tv_sec) * 1e3 +
                  (double)(end->at.tv_nsec - start->at.tv_nsec) * 1e-6);
    return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags) {
    (void)stream, (void)event, (void)flags; // work runs when queued: the order holds already
    BEGIN_CALL();
    return cudaSuccess;
}

// ----------------------------------------------------------------------------
// memory

static std::map<uintptr_t, size_t> allocations; // device memory: start -> bytes
static size_t allocated_bytes;

// Whether [ptr, ptr + bytes) lies within one allocation of device memory.
static bool device_range(const void* ptr, size_t bytes) {
    uintptr_t p = (uintptr_t)ptr;
    auto it = allocations.upper_bound(p);
    if (it == allocations.begin())
        return false;
    --it;
    return p >= it->first && bytes <= it->second && p - it->first <= it->second - bytes;
}

bool cuda_on_cpu_is_device_pointer(const void* ptr) {
    std::lock_guard<std::recursive_mutex> guard(runtime_lock);
    return device_range(ptr, 1);
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
    *ptr = nullptr;
    BEGIN_CALL();
    if (refused_while_capturing("cudaMalloc"))
        return last_error;
    if (bytes == 0 || bytes > DEVICE_MEMORY - allocated_bytes)
        return fail(cudaErrorMemoryAllocation);
    void* p = nullptr; // aligned as cudaMalloc's, and exactly bytes long (for AddressSanitizer)
    if (posix_memalign(&p, 256, bytes) != 0)
        return fail(cudaErrorMemoryAllocation);
    memset(p, 0xff, bytes); // a NaN in every float: what was never written shows
    allocations[(uintptr_t)p] = bytes;
    allocated_bytes += bytes;
    *ptr = p;
    return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
    BEGIN_CALL();
    if (ptr == nullptr)
        return cudaSuccess;
    if (refused_while_capturing("cudaFree"))
        return last_error;
    auto it = allocations.find((uintptr_t)ptr);
    if (it == allocations.end())
        return fail(cudaErrorInvalidValue);
    allocated_bytes -= it->second;
    allocations.erase(it);
    free(ptr);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream) {
    BEGIN_CALL();
    if (!device_range(ptr, bytes))
        return fail(cudaErrorInvalidValue);
    return enqueue(stream, "cudaMemsetAsync", [=]() { memset(ptr, value, bytes); });
}

cudaError_t cudaMemset(void* ptr, int value, size_t bytes) {
    BEGIN_CALL();
    if (refused_while_capturing("cudaMemset"))
        return last_error;
    return cudaMemsetAsync(ptr, value, bytes, nullptr);
}

// Whether a copy's pointers are where its kind says: device memory on the device's side,
// host memory on the host's (a wrong kind is a bug that a GPU reports or corrupts memory for).
static bool copy_matches_kind(void* dst, const void* src, size_t bytes, enum cudaMemcpyKind kind) {
    bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    return (dst_device ? device_range(dst, bytes) : !cuda_on_cpu_is_device_pointer(dst)) &&
           (src_device ? device_range(src, bytes) : !cuda_on_cpu_is_device_pointer(src));
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t stream) {
    BEGIN_CALL();
    if (!copy_matches_kind(dst, src, bytes, kind)) {
        fprintf(stderr, "cuda-on-cpu: a copy of %zu bytes whose pointers are not of kind %d\n",
                bytes, (int)kind);
        return fail(cudaErrorInvalidValue);
    }
    return enqueue(stream, "cudaMemcpyAsync", [=]() { memcpy(dst, src, bytes); });
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, enum cudaMemcpyKind kind) {
    BEGIN_CALL();
    if (refused_while_capturing("cudaMemcpy"))
        return last_error;
    return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}

// ----------------------------------------------------------------------------
// the threads of a block: fibers, each run until it finishes or waits

enum FiberState { READY, AT_SYNCTHREADS, AT_SHUFFLE, FINISHED };

// A switch between stacks: on x86-64 a few instructions that keep what the ABI says a
// callee keeps (glibc's swapcontext also saves the signal mask, a system call per switch,
// which made a test several times slower); elsewhere ucontext.
#if defined(__x86_64__)
struct FiberContext {
    void* sp; // where the stack stood when the fiber last left it
};
// Saves the callee-saved registers on this stack, its top in *from, and continues where
// `to` left off (or, for a new fiber, at fiber_main).
extern "C" void cuda_on_cpu_switch(FiberContext* from, const FiberContext* to);
asm(".text\n"
    ".globl cuda_on_cpu_switch\n"
    ".type cuda_on_cpu_switch, @function\n"
    "cuda_on_cpu_switch:\n"
    "    pushq %rbp\n    pushq %rbx\n    pushq %r12\n    pushq %r13\n    pushq %r14\n    pushq "
    "%r15\n"
    "    movq %rsp, (%rdi)\n"
    "    movq (%rsi), %rsp\n"
    "    popq %r15\n    popq %r14\n    popq %r13\n    popq %r12\n    popq %rbx\n    popq %rbp\n"
    "    ret\n"
    ".size cuda_on_cpu_switch, .-cuda_on_cpu_switch\n");
#define FIBER_SWITCH(from, to) cuda_on_cpu_switch((from), (to))
#else
struct FiberContext {
    ucontext_t context;
};
#define FIBER_SWITCH(from, to) swapcontext(&(from)->context, &(to)->context)
#endif

struct Fiber {
    FiberContext context;
    void* stack;
    FiberState state;
    CudaOnCpuIndex index;
    float value;   // a shuffle's: given, then taken
    unsigned mask; // the lanes that take part in it
    int lane_mask; // whose value this lane takes: lane ^ lane_mask
};

static Fiber fibers[MAX_BLOCK_THREADS];
static Fiber* running;                          // the fiber now on the CPU
static FiberContext scheduler;                  // where a fiber goes when it waits or returns
static const std::function<void()>* block_work; // what each thread of the launch runs
static unsigned char* dynamic_shared;           // the launch's, exactly its size
#ifdef __SANITIZE_ADDRESS__
static const void* scheduler_stack;
static size_t scheduler_stack_bytes;
#endif

// From the scheduler into fiber f, and back when it waits or finishes.
static void resume(Fiber* f) {
    running = f;
    cuda_on_cpu_thread_idx = f->index;
#ifdef __SANITIZE_ADDRESS__
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&fake_stack, f->stack, FIBER_STACK_BYTES);
#endif
    FIBER_SWITCH(&scheduler, &f->context);
#ifdef __SANITIZE_ADDRESS__
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

// From the running fiber back to the scheduler, which resumes it once it may go on (or,
// FINISHED, never).
static void wait_as(FiberState state) {
    Fiber* self = running;
    self->state = state;
#ifdef __SANITIZE_ADDRESS__
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(state == FINISHED ? nullptr : &fake_stack, scheduler_stack,
                                   scheduler_stack_bytes);
#endif
    FIBER_SWITCH(&self->context, &scheduler);
#ifdef __SANITIZE_ADDRESS__
    __sanitizer_finish_switch_fiber(fake_stack, &scheduler_stack, &scheduler_stack_bytes);
#endif
}

static void fiber_main(void) {
#ifdef __SANITIZE_ADDRESS__
    __sanitizer_finish_switch_fiber(nullptr, &scheduler_stack, &scheduler_stack_bytes);
#endif
    (*block_work)();
    wait_as(FINISHED);
}

void cuda_on_cpu_syncthreads(void) {
    wait_as(AT_SYNCTHREADS);
}

float cuda_on_cpu_shfl_xor(unsigned mask, float value, int lane_mask) {
    running->value = value;
    running->mask = mask;
    running->lane_mask = lane_mask;
    wait_as(AT_SHUFFLE);
    return running->value;
}

void* cuda_on_cpu_dynamic_shared(void) {
    return dynamic_shared;
}

static unsigned linear_id(CudaOnCpuIndex i, dim3 block) {
    return (i.z * block.y + i.y) * block.x + i.x;
}

// Lets the threads at a barrier go on where every thread it needs has reached it: true if
// any did. A barrier that a finished thread can no longer reach is a fault, said in why.
static bool release_barriers(unsigned n, char* why, size_t why_len) {
    unsigned finished = 0, at_sync = 0, at_shuffle = 0;
    for (unsigned t = 0; t < n; t++) {
        finished += fibers[t].state == FINISHED;
        at_sync += fibers[t].state == AT_SYNCTHREADS;
        at_shuffle += fibers[t].state == AT_SHUFFLE;
    }
    bool released = false;
    if (at_sync > 0 && at_sync + finished == n) {
        if (finished > 0) {
            snprintf(why, why_len, "%u threads wait at __syncthreads, %u have returned", at_sync,
                     finished);
            return false;
        }
        for (unsigned t = 0; t < n; t++)
            fibers[t].state = READY;
        return true;
    }
    for (unsigned w = 0; w * WARP_LANES < n; w++) {
        Fiber* lanes = &fibers[w * WARP_LANES];
        unsigned count = n - w * WARP_LANES < WARP_LANES ? n - w * WARP_LANES : WARP_LANES;
        unsigned lead = 0;
        while (lead < count && lanes[lead].state != AT_SHUFFLE)
            lead++;
        if (lead == count)
            continue;
        unsigned mask = lanes[lead].mask;
        bool all_there = true;
        for (unsigned l = 0; l < WARP_LANES; l++) {
            if ((mask >> l & 1u) == 0)
                continue;
            if (l >= count) {
                snprintf(why, why_len, "warp %u: a shuffle's mask 0x%08x names lane %u of %u", w,
                         mask, l, count);
                return false;
            }
            if (lanes[l].state != AT_SHUFFLE) {
                all_there = false;
                if (lanes[l].state == FINISHED) {
                    snprintf(why, why_len, "warp %u: lane %u has returned, its shuffle waits", w,
                             l);
                    return false;
                }
            } else if (lanes[l].mask != mask || lanes[l].lane_mask != lanes[lead].lane_mask) {
                snprintf(why, why_len, "warp %u: lanes %u and %u shuffle differently", w, lead, l);
                return false;
            }
        }
        if (!all_there)
            continue;
        float values[WARP_LANES];
        for (unsigned l = 0; l < count; l++)
            values[l] = lanes[l].value;
        for (unsigned l = 0; l < count; l++) {
            if ((mask >> l & 1u) == 0)
                continue;
            unsigned from = l ^ (unsigned)lanes[l].lane_mask;
            if (from >= WARP_LANES || (mask >> from & 1u) == 0) {
                snprintf(why, why_len, "warp %u: lane %u takes lane %u's value, not in its mask", w,
                         l, from);
                return false;
            }
            lanes[l].value = values[from];
            lanes[l].state = READY;
        }
        released = true;
    }
    if (!released)
        snprintf(why, why_len,
                 "%u threads wait at __syncthreads, %u at a shuffle, %u returned: "
                 "none can go on",
                 at_sync, at_shuffle, finished);
    return released;
}

// Makes f the thread at index, ready to start (its stack made the first time).
static bool start_fiber(Fiber* f, CudaOnCpuIndex index, const char* name) {
    if (f->stack == nullptr) {
        f->stack = mmap(nullptr, FIBER_STACK_BYTES, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (f->stack == MAP_FAILED) {
            f->stack = nullptr;
            fault("kernel %s: no memory for a thread's stack", name);
            return false;
        }
    }
#ifdef __SANITIZE_ADDRESS__
    __asan_unpoison_memory_region(f->stack, FIBER_STACK_BYTES); // a faulted fiber's frames
#endif
#if defined(__x86_64__)
    // A stack as cuda_on_cpu_switch leaves one: six registers (zero), then the address it
    // returns to, fiber_main, which then finds the stack aligned as after a call.
    void** top = (void**)((char*)f->stack + FIBER_STACK_BYTES);
    top[-1] = nullptr; // fiber_main's own return address: it never returns
    top[-2] = (void*)fiber_main;
    f->context.sp = top - 8;
    memset(f->context.sp, 0, 6 * sizeof(void*));
#else
    getcontext(&f->context.context);
    f->context.context.uc_stack.ss_sp = f->stack;
    f->context.context.uc_stack.ss_size = FIBER_STACK_BYTES;
    f->context.context.uc_link = nullptr; // fiber_main never returns
    makecontext(&f->context.context, fiber_main, 0);
#endif
    f->state = READY;
    f->index = index;
    return true;
}

// Runs one block: every thread until it waits, in turn (backwards if reverse), then the
// barriers that all have reached open, until every thread has returned or a fault is said.
static void run_block(const char* name, dim3 block, bool reverse) {
    unsigned n = block.x * block.y * block.z;
    for (unsigned z = 0; z < block.z; z++)
        for (unsigned y = 0; y < block.y; y++)
            for (unsigned x = 0; x < block.x; x++)
                if (!start_fiber(&fibers[linear_id({x, y, z}, block)], {x, y, z}, name))
                    return;
    for (;;) {
        bool all_finished = true;
        for (unsigned k = 0; k < n; k++) {
            Fiber* f = &fibers[reverse ? n - 1 - k : k];
            if (f->state == READY)
                resume(f);
            all_finished = all_finished && f->state == FINISHED;
        }
        if (all_finished)
            return;
        char why[200];
        if (!release_barriers(n, why, sizeof why)) {
            fault("kernel %s: block (%u, %u, %u): %s", name, cuda_on_cpu_block_idx.x,
                  cuda_on_cpu_block_idx.y, cuda_on_cpu_block_idx.z, why);
            return;
        }
    }
}

// ----------------------------------------------------------------------------
// launches

static std::map<const void*, int> dynamic_shared_limits; // cudaFuncSetAttribute's, per kernel

cudaError_t cuda_on_cpu_func_set_attribute(const void* kernel, enum cudaFuncAttribute attr,
                                           int value) {
    BEGIN_CALL();
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
        value > SHARED_OPTIN_LIMIT)
        return fail(cudaErrorInvalidValue);
    dynamic_shared_limits[kernel] = value;
    return cudaSuccess;
}

static bool launch_fits(const void* kernel, const char* name, dim3 grid, dim3 block,
                        size_t shared) {
    unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (threads == 0 || threads > MAX_BLOCK_THREADS || block.z > 64 || grid.x == 0 ||
        grid.x > 2147483647u || grid.y == 0 || grid.y > 65535 || grid.z == 0 || grid.z > 65535) {
        fprintf(stderr,
                "cuda-on-cpu: kernel %s: grid (%u, %u, %u) of blocks (%u, %u, %u): "
                "beyond CUDA's limits\n",
                name, grid.x, grid.y, grid.z, block.x, block.y, block.z);
        fail(cudaErrorInvalidConfiguration);
        return false;
    }
    auto limit = dynamic_shared_limits.find(kernel);
    size_t allowed =
        limit != dynamic_shared_limits.end() ? (size_t)limit->second : SHARED_DEFAULT_LIMIT;
    if (shared > allowed) {
        fprintf(stderr,
                "cuda-on-cpu: kernel %s: %zu bytes of dynamic shared memory, %zu "
                "allowed (cudaFuncSetAttribute raises it)\n",
                name, shared, allowed);
        fail(cudaErrorInvalidValue);
        return false;
    }
    return true;
}

void cuda_on_cpu_run(const void* kernel, const char* name, dim3 grid, dim3 block, size_t shared,
                     cudaStream_t stream, const void* bad_pointer, std::function<void()> thread) {
    std::lock_guard<std::recursive_mutex> guard(runtime_lock);
    if (sticky_error != cudaSuccess) {
        fail(sticky_error);
        return;
    }
    if (!launch_fits(kernel, name, grid, block, shared))
        return;
    if (bad_pointer != nullptr) {
        fault("kernel %s: a pointer argument (%p) is not device memory", name, bad_pointer);
        return;
    }
    enqueue(stream, name, [=]() {
        static unsigned long long blocks_run;
        block_work = &thread;
        cuda_on_cpu_grid_dim = {grid.x, grid.y, grid.z};
        cuda_on_cpu_block_dim = {block.x, block.y, block.z};
        std::vector<unsigned char> shared_memory(shared);
        dynamic_shared = shared_memory.data();
        for (unsigned z = 0; z < grid.z && sticky_error == cudaSuccess; z++)
            for (unsigned y = 0; y < grid.y && sticky_error == cudaSuccess; y++)
                for (unsigned x = 0; x < grid.x && sticky_error == cudaSuccess; x++) {
                    // dynamic shared memory starts as garbage on a GPU: NaN bytes here
                    memset(dynamic_shared, 0xff, shared);
                    cuda_on_cpu_block_idx = {x, y, z};
                    run_block(name, block, blocks_run++ % 2 == 1);
                }
        dynamic_shared = nullptr;
    });
}
