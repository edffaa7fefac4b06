/*
 * trace.h - a timeline of every rank's work (--trace FILE), and where each step's time
 * goes (--phases).
 *
 * Code that does a piece of work opens a span before it and closes it after:
 *
 *     trace_begin(TRACE_FORWARD);
 *     int err = forward_pass(m, B);
 *     return trace_end(err);
 *
 * Each process records its own spans (a rank's, or lesson 03's node agent's) into a
 * buffer allocated once at trace_start: a span costs two reads of the CPU's time-stamp
 * counter (where the kernel keeps time by it; else of CLOCK_MONOTONIC) and 32 bytes
 * written into that buffer, no allocation and no I/O; with neither flag, trace_begin and
 * trace_end are one branch each. SIGINT and SIGTERM write what was recorded before the
 * signal ends the process. The spans of the communication thread (lesson 04's buckets)
 * go to a track of their own beside the rank's, and so, on a GPU, do the buckets that
 * NCCL runs on its stream (trace_stream_begin/end). At the end each worker writes its
 * events to FILE.rankN (trace_write_part); the process that started the workers joins
 * those into FILE (trace_merge), a Chrome trace event file that Perfetto
 * (ui.perfetto.dev) and chrome://tracing open: {"traceEvents": [complete events ("ph":
 * "X") and track names]}, times in microseconds of CLOCK_MONOTONIC, which every process
 * of a machine shares, so the ranks of a node lie on one time axis. Lesson 03's node k
 * writes FILE.nodeK (node 0: FILE), as clocks of different machines are not comparable.
 *
 * The phases: every span of the rank's own thread that nothing but an epoch encloses
 * adds its time to its phase (forward and loss to forward; a forward pass inside eval to
 * eval; the one launch of a step with --kernels graph or fused to graph/fused: forward to
 * update in lesson 01, forward to backward where an all-reduce follows). On a GPU those
 * spans are timed by CUDA events recorded on the compute stream, resolved once per epoch,
 * since host clocks would time only the kernels' launches (the spans inside them keep the
 * host's times: an event costs about a kernel's launch). At the end rank 0 prints, per
 * phase that took time on some rank, the mean time per optimizer step and its share of
 * the training time, over all ranks, with the fastest and the slowest rank's
 * (trace_report_phases).
 *
 * APIs: TraceKind, TracePhase, TraceRole, trace_active, trace_begin, trace_begin_named,
 *       trace_begin_call, trace_end, trace_probe, trace_start, trace_thread_is_comm,
 *       trace_stream_begin, trace_stream_end,
 *       trace_write_part, trace_merge, trace_stop, trace_report_phases, trace_phase_row,
 *       trace_kind_phase.
 */
#ifndef TRACE_H
#define TRACE_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    TRACE_FORWARD,
    TRACE_LOSS,
    TRACE_BACKWARD,
    TRACE_ALLREDUCE, // on the rank's thread: what the step waits for
    TRACE_OPTIMIZER,
    TRACE_EVAL,
    TRACE_EPOCH,
    TRACE_CHECKPOINT,
    TRACE_COLLECTIVE,     // broadcast, barrier, all-gather: before and after training
    TRACE_SETUP,          // lesson 03's rendezvous, fork, ring connection
    TRACE_BUCKET,         // an all-reduce run on the communication thread
    TRACE_FAST_GRADIENTS, // --kernels graph or fused: forward, loss and backward, one launch
    TRACE_FAST_STEP,      // the same and the optimizer's update: a training step, one launch
    TRACE_KINDS
} TraceKind;

typedef enum {
    PHASE_FORWARD,
    PHASE_BACKWARD,
    PHASE_ALLREDUCE,
    PHASE_OPTIMIZER,
    PHASE_FAST, // TRACE_FAST_GRADIENTS and TRACE_FAST_STEP
    PHASE_EVAL,
    PHASE_OTHER, // the training time no phase span covers
    TRACE_PHASES
} TracePhase;

// Whether spans are recorded (--trace or --phases): the one branch when both are off.
extern bool trace_active;

void trace_open_span(TraceKind kind, const char* name, size_t bytes, int epoch, int step);
void trace_close_span(void);

// Opens a span of kind, named after it (forward, loss, ...), on the calling thread's track.
static inline void trace_begin(TraceKind kind) {
    if (trace_active)
        trace_open_span(kind, NULL, 0, -1, -1);
}

// Opens a span of kind named name (TRACE_SETUP's "rendezvous", ...).
static inline void trace_begin_named(TraceKind kind, const char* name) {
    if (trace_active)
        trace_open_span(kind, name, 0, -1, -1);
}

// A collective's span (or an epoch's): its size and the epoch and step it serves (-1: none).
static inline void trace_begin_call(TraceKind kind, const char* name, size_t bytes, int epoch,
                                    int step) {
    if (trace_active)
        trace_open_span(kind, name, bytes, epoch, step);
}

// Closes the calling thread's innermost open span; returns status, so that a call can
// be traced in one line: `return trace_end(work());`.
static inline int trace_end(int status) {
    if (trace_active)
        trace_close_span();
    return status;
}

// Before anything runs: whether path can be written (not a directory, its directory
// there and writable). Removes what an earlier run left of its parts (path.rank0 ..
// path.rankN-1 for ranks [first_rank, first_rank + count)). Returns 0, or -1 with why
// filled ("--trace FILE: ...").
int trace_probe(const char* path, int first_rank, int count, char* why, size_t why_len);

// Who writes what at the end.
typedef enum {
    TRACE_ALONE,  // the only process (lesson 01): its whole FILE (trace_merge of no parts)
    TRACE_WORKER, // a rank that its parent or agent merges: FILE.rankN (trace_write_part)
    TRACE_AGENT,  // lesson 03's node agent: its own spans and its workers' parts
} TraceRole;

// Starts recording in this process (a forked worker starts afresh): its spans go to
// track (node, rank) (an agent's to its own). path: where it writes (NULL: nowhere, the
// phases only). gpu: time the spans with CUDA events on the device this process uses.
// From now on SIGINT or SIGTERM first writes what was recorded, as the end would (a
// worker's part, a process alone's whole file), then ends the process as the signal
// does. Returns 0, or -1 with a message.
int trace_start(const char* path, TraceRole role, int node, int rank, bool gpu);

// The calling thread is the rank's communication thread: its spans go to its own track.
void trace_thread_is_comm(void);

void trace_stream_span_begin(void* stream);
void trace_stream_span_end(TraceKind kind, const char* name, size_t bytes, int epoch, int step,
                           void* stream);

// A collective queued on a GPU stream of its own (cudaStream_t stream; NCCL's, for lesson
// 04's buckets), between these two calls: on a GPU it becomes a span of the rank's
// "nccl" track, timed by CUDA events on that stream, since it runs after the host has
// gone on. Nothing elsewhere.
static inline void trace_stream_begin(void* stream) {
    if (trace_active)
        trace_stream_span_begin(stream);
}

static inline void trace_stream_end(TraceKind kind, const char* name, size_t bytes, int epoch,
                                    int step, void* stream) {
    if (trace_active)
        trace_stream_span_end(kind, name, bytes, epoch, step, stream);
}

// A worker's end: writes its events to path.rankN (even after a failure: what it has,
// spans still open marked unfinished). Returns 0, or -1 with a message.
int trace_write_part(void);

// The end, in the process that started the workers (or in lesson 01's only one): writes
// path from this process's own events and those of the parts of ranks [first_rank,
// first_rank + count), which it then removes; names the ranks that wrote none. Prints
// one line saying what it wrote. Returns 0, or -1 with a message.
int trace_merge(const char* path, int first_rank, int count);

// Stops recording and frees the buffer.
void trace_stop(void);

typedef struct Communicator Communicator;

// At the end of training: every rank's phases gathered (comm NULL: this rank alone), and
// with print (rank 0) the table printed. Every rank must call it. Returns 0 or -1.
int trace_report_phases(Communicator* comm, int world_size, double training_seconds, bool print);

// This rank's row of the phase table: seconds per phase over the training (other: what
// of training_seconds no phase covers), then the optimizer steps taken.
#define TRACE_PHASE_ROW (TRACE_PHASES + 1)
void trace_phase_row(float row[TRACE_PHASE_ROW], double training_seconds);

// The phase a kind's time counts in, or TRACE_PHASES for none.
TracePhase trace_kind_phase(TraceKind kind);

#ifdef __cplusplus
}
#endif

#endif
