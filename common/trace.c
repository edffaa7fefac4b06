/*
 * trace.c - spans recorded into a buffer allocated once, written as Chrome trace events,
 * and summed into phases (see trace.h).
 */
#include "trace.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#include "check.h"
#include "collective.h"
#include "timer.h"
#include "trace_gpu.h"

// Spans one process keeps: 11 400 in lesson 01 at the defaults; 32 bytes each.
#define TRACE_CAPACITY (1 << 18)
#define TRACE_NAME_BYTES 24
#define TRACE_MAX_NAMES 256
#define TRACE_MAX_DEPTH 16
#define TRACE_PATH_BYTES 4096

// A span, written into the buffer when it opens and completed when it closes: small, as
// a step writes several.
typedef struct {
    uint64_t start;      // in ticks of the spans' clock (see below)
    float ticks;         // its length
    uint32_t bytes;      // a collective's size (0: none)
    int32_t epoch, step; // what a collective or an epoch serves (-1: none)
    uint8_t kind;        // TraceKind
    uint8_t track;       // which of its process's tracks (TRACK_RANK ...)
    uint8_t unfinished;  // still open when the events were written
    uint8_t name;        // in names[]; 0: the kind's own name
} TraceEvent;

// The tracks of a rank: its thread, its communication thread (the ring's buckets), the
// GPU stream of its collectives (NCCL's buckets), and on a GPU the phases' spans as the
// GPU ran them (the thread's track keeps the host's times, so that its spans nest).
enum { TRACK_RANK, TRACK_COMM, TRACK_STREAM, TRACK_GPU, TRACKS };

// A span still open on a thread.
typedef struct {
    uint64_t start; // ticks
    int event;      // its place in the buffer, or -1 (the buffer was full)
    TraceKind kind;
    bool counts;   // adds its time to its phase: only epochs enclose it
    int gpu_begin; // CUDA event slot of its start, or -1
} OpenSpan;

// What each thread knows of its own spans.
typedef struct {
    OpenSpan open[TRACE_MAX_DEPTH];
    int depth;       // spans open (deeper ones than TRACE_MAX_DEPTH are not recorded)
    int epochs_open; // of which epochs
    bool comm;       // the communication thread
} TraceThread;

// A span timed on the GPU, whose times are known once the GPU got past its end.
typedef struct {
    int event; // its index in the buffer, or -1 (the buffer was full)
    bool counts;
    bool copy; // the GPU's times go to a copy on TRACK_GPU (else to the event itself)
    TraceKind kind;
    int gpu_begin, gpu_end;
} PendingSpan;

bool trace_active = false;

static struct {
    TraceEvent* events; // (TRACE_CAPACITY)
    atomic_int count;   // claimed so far (may pass TRACE_CAPACITY: the rest are dropped)
    // The names of spans not named after their kind, each kept once; entries below
    // name_count are never changed again, so that both threads read them unlocked.
    char names[TRACE_MAX_NAMES][TRACE_NAME_BYTES + 1];
    atomic_int name_count;
    pthread_mutex_t naming;
    char path[TRACE_PATH_BYTES];
    char signal_path[TRACE_PATH_BYTES + 16]; // what an interruption writes
    TraceRole role;
    int node, rank;
    bool track_used[TRACKS];
    bool gpu;
    PendingSpan* pending; // (TRACE_GPU_MARKS / 2) spans timed on the GPU, not resolved yet
    int pending_count;
    double phase_ticks[TRACE_PHASES];
    long steps;
} trace = {.name_count = 1, .naming = PTHREAD_MUTEX_INITIALIZER};

static _Thread_local TraceThread self;

static const char* const kind_names[TRACE_KINDS] = {
    [TRACE_FORWARD] = "forward",
    [TRACE_LOSS] = "loss",
    [TRACE_BACKWARD] = "backward",
    [TRACE_ALLREDUCE] = "all-reduce",
    [TRACE_OPTIMIZER] = "optimizer",
    [TRACE_EVAL] = "eval",
    [TRACE_EPOCH] = "epoch",
    [TRACE_CHECKPOINT] = "checkpoint",
    [TRACE_COLLECTIVE] = "collective",
    [TRACE_SETUP] = "setup",
    [TRACE_BUCKET] = "bucket all-reduce",
    [TRACE_FAST_GRADIENTS] = "graph/fused gradients",
    [TRACE_FAST_STEP] = "graph/fused step",
};

static const char* const phase_names[TRACE_PHASES] = {
    "forward", "backward", "all-reduce", "optimizer", "graph/fused", "eval", "other"};

TracePhase trace_kind_phase(TraceKind kind) {
    switch (kind) {
    case TRACE_FORWARD:
    case TRACE_LOSS:
        return PHASE_FORWARD;
    case TRACE_BACKWARD:
        return PHASE_BACKWARD;
    case TRACE_ALLREDUCE:
        return PHASE_ALLREDUCE;
    case TRACE_OPTIMIZER:
        return PHASE_OPTIMIZER;
    case TRACE_FAST_GRADIENTS:
    case TRACE_FAST_STEP:
        return PHASE_FAST;
    case TRACE_EVAL:
        return PHASE_EVAL;
    default:
        return TRACE_PHASES;
    }
}

// ----------------------------------------------------------------------------
// the spans' clock: the CPU's time-stamp counter where the kernel itself keeps time by
// it (x86-64 with clocksource tsc: the counter is then the same on every core), read in a
// third of clock_gettime's time, else CLOCK_MONOTONIC's nanoseconds. Ticks become
// timer_seconds() by the line through two readings of both clocks, one at trace_start
// and one when converting, so that the longer the run, the closer the fit.

static struct {
    bool tsc;
    uint64_t ticks; // at trace_start
    double seconds; // timer_seconds() then
} origin;

static inline uint64_t ticks_now(void) {
#if defined(__x86_64__)
    if (origin.tsc)
        return __rdtsc();
#endif
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// Both clocks at once: the counter read on both sides of the kernel's clock, the
// closest of a few tries (a thread moved off its core between the reads would spoil one).
static void read_both(uint64_t* ticks, double* seconds) {
    uint64_t closest = UINT64_MAX;
    for (int try = 0; try < 8; try++) {
        uint64_t before = ticks_now();
        double now = timer_seconds();
        uint64_t after = ticks_now();
        if (after - before < closest) {
            closest = after - before;
            *ticks = before + closest / 2;
            *seconds = now;
        }
    }
}

// Whether the kernel keeps time by the time-stamp counter.
static bool kernel_uses_tsc(void) {
#if defined(__x86_64__)
    char source[32] = "";
    FILE* f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
    if (f == NULL)
        return false;
    bool tsc = fgets(source, sizeof source, f) != NULL && strncmp(source, "tsc\n", 4) == 0;
    fclose(f);
    return tsc;
#else
    return false;
#endif
}

// Seconds per tick, from origin to now (at least a millisecond apart, for the fit).
static double seconds_per_tick(void) {
    if (!origin.tsc)
        return 1e-9;
    uint64_t ticks;
    double seconds;
    do
        read_both(&ticks, &seconds);
    while (seconds - origin.seconds < 1e-3 || ticks == origin.ticks);
    return (seconds - origin.seconds) / (double)(ticks - origin.ticks);
}

// ----------------------------------------------------------------------------
// recording

// name's place in trace.names (cut to TRACE_NAME_BYTES), added if it is new; 0 (the
// kind's name) when the table is full.
static uint8_t name_index(const char* name) {
    int known = atomic_load_explicit(&trace.name_count, memory_order_acquire);
    for (int i = 1; i < known; i++)
        if (strncmp(trace.names[i], name, TRACE_NAME_BYTES) == 0)
            return (uint8_t)i;
    pthread_mutex_lock(&trace.naming);
    int i = 1, count = atomic_load(&trace.name_count);
    while (i < count && strncmp(trace.names[i], name, TRACE_NAME_BYTES) != 0)
        i++;
    if (i == count && count < TRACE_MAX_NAMES) {
        snprintf(trace.names[i], sizeof trace.names[i], "%s", name);
        atomic_store_explicit(&trace.name_count, count + 1, memory_order_release);
    }
    pthread_mutex_unlock(&trace.naming);
    return i < TRACE_MAX_NAMES ? (uint8_t)i : 0;
}

// Claims the next place in the buffer for a span; -1 when the buffer is full (or none).
static int claim_event(void) {
    if (trace.events == NULL)
        return -1;
    int i = atomic_fetch_add_explicit(&trace.count, 1, memory_order_relaxed);
    return i < TRACE_CAPACITY ? i : -1;
}

void trace_open_span(TraceKind kind, const char* name, size_t bytes, int epoch, int step) {
    TraceThread* t = &self;
    if (t->depth++ >= TRACE_MAX_DEPTH)
        return;
    OpenSpan* s = &t->open[t->depth - 1];
    s->kind = kind;
    s->counts = !t->comm && t->depth - t->epochs_open == 1;
    t->epochs_open += kind == TRACE_EPOCH;
    s->event = claim_event();
    if (s->event >= 0)
        trace.events[s->event] = (TraceEvent){.bytes = (uint32_t)bytes,
                                              .epoch = epoch,
                                              .step = step,
                                              .kind = (uint8_t)kind,
                                              .track = t->comm ? TRACK_COMM : TRACK_RANK,
                                              .name = name != NULL ? name_index(name) : 0};
    // On a GPU, only what the phases count: each CUDA event costs about a kernel launch.
    s->gpu_begin = trace.gpu && s->counts ? trace_gpu_mark() : -1;
    s->start = ticks_now();
}

// Adds a span's time to its phase.
static void count_phase(TraceKind kind, double ticks) {
    TracePhase phase = trace_kind_phase(kind);
    if (phase == TRACE_PHASES)
        return;
    trace.phase_ticks[phase] += ticks;
    trace.steps += kind == TRACE_OPTIMIZER || kind == TRACE_FAST_STEP;
}

// The spans timed on the GPU since the last call get their GPU times (the host waits
// for the GPU to get past the last of them): their phases, a copy on TRACK_GPU (or, for
// a stream's span, the span itself); and the event slots are used again.
static void resolve_gpu_spans(void) {
    double tick = seconds_per_tick();
    // The last span's end is the last event recorded: past it, the GPU is past them all.
    int reached = trace_gpu_wait(trace.pending[trace.pending_count - 1].gpu_end) == 0;
    for (int i = 0; reached && i < trace.pending_count; i++) {
        PendingSpan* p = &trace.pending[i];
        double start = trace_gpu_time(p->gpu_begin), end = trace_gpu_time(p->gpu_end);
        if (start < 0.0 || end < 0.0)
            continue; // the GPU failed: the host's times stay
        if (p->counts)
            count_phase(p->kind, (end - start) / tick);
        int copy = p->event >= 0 && p->copy ? claim_event() : -1;
        if (copy >= 0) {
            trace.events[copy] = trace.events[p->event];
            trace.events[copy].track = TRACK_GPU;
            trace.track_used[TRACK_GPU] = true;
        }
        int timed = p->copy ? copy : p->event;
        if (timed >= 0) {
            TraceEvent* e = &trace.events[timed];
            e->start = origin.ticks + (uint64_t)(int64_t)((start - origin.seconds) / tick);
            e->ticks = (float)((end - start) / tick);
        }
    }
    trace.pending_count = 0;
    trace_gpu_recycle();
}

// Completes a span that closed: its phase now (host times), or once the GPU ran it.
static void close_span(const OpenSpan* s, uint64_t ticks) {
    if (s->event >= 0)
        trace.events[s->event].start = s->start, trace.events[s->event].ticks = (float)ticks;
    int gpu_end = s->gpu_begin >= 0 ? trace_gpu_mark() : -1;
    if (gpu_end >= 0 && trace.pending != NULL)
        trace.pending[trace.pending_count++] =
            (PendingSpan){s->event, s->counts, true, s->kind, s->gpu_begin, gpu_end};
    else if (s->counts)
        count_phase(s->kind, (double)ticks);
    if (s->kind == TRACE_EPOCH && trace.pending_count > 0)
        resolve_gpu_spans();
}

void trace_close_span(void) {
    TraceThread* t = &self;
    if (t->depth == 0)
        return;
    if (t->depth-- > TRACE_MAX_DEPTH)
        return;
    const OpenSpan* s = &t->open[t->depth];
    uint64_t ticks = ticks_now() - s->start;
    t->epochs_open -= s->kind == TRACE_EPOCH;
    trace.track_used[t->comm ? TRACK_COMM : TRACK_RANK] = true;
    close_span(s, ticks);
}

void trace_thread_is_comm(void) {
    self.comm = true;
}

static _Thread_local int stream_begin = -1; // the event of the stream span being queued

void trace_stream_span_begin(void* stream) {
    stream_begin = trace.gpu && trace.pending != NULL ? trace_gpu_mark_on(stream) : -1;
}

void trace_stream_span_end(TraceKind kind, const char* name, size_t bytes, int epoch, int step,
                           void* stream) {
    int end = stream_begin >= 0 ? trace_gpu_mark_on(stream) : -1;
    if (end < 0)
        return;
    int event = claim_event();
    if (event >= 0) // the host's now until the GPU's times are known
        trace.events[event] = (TraceEvent){.start = ticks_now(),
                                           .bytes = (uint32_t)bytes,
                                           .epoch = epoch,
                                           .step = step,
                                           .kind = (uint8_t)kind,
                                           .track = TRACK_STREAM,
                                           .name = name_index(name)};
    trace.pending[trace.pending_count++] =
        (PendingSpan){event, false, false, kind, stream_begin, end};
    trace.track_used[TRACK_STREAM] = true;
    stream_begin = -1;
}

// ----------------------------------------------------------------------------
// starting and stopping

static void write_when_interrupted(void); // below, with the writing

int trace_probe(const char* path, int first_rank, int count, char* why, size_t why_len) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(why, why_len, "--trace %s: is a directory; give a file's name", path);
        return -1;
    }
    bool existed = access(path, F_OK) == 0; // one made here goes again: no empty trace left
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0 || strlen(path) + 16 > TRACE_PATH_BYTES) {
        snprintf(why, why_len, "--trace %s: cannot write there: %s", path,
                 fd < 0 ? strerror(errno) : "the name is too long");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    if (!existed)
        unlink(path);
    for (int r = first_rank; r < first_rank + count; r++) {
        char part[TRACE_PATH_BYTES + 16];
        snprintf(part, sizeof part, "%s.rank%d", path, r);
        unlink(part);
    }
    return 0;
}

int trace_start(const char* path, TraceRole role, int node, int rank, bool gpu) {
    trace_active = false; // a forked worker forgets its parent's spans
    self = (TraceThread){0};
    if (trace.events == NULL && path != NULL &&
        (trace.events = malloc(TRACE_CAPACITY * sizeof *trace.events)) == NULL) {
        rank_log("trace: out of memory for %d spans", TRACE_CAPACITY);
        return -1;
    }
    // Touched now (in a forked worker too, whose pages are its parent's until written),
    // so that no span pays for a page fault.
    if (trace.events != NULL)
        memset(trace.events, 0, TRACE_CAPACITY * sizeof *trace.events);
    if (gpu && trace.pending == NULL &&
        ((trace.pending = malloc(TRACE_GPU_MARKS / 2 * sizeof *trace.pending)) == NULL ||
         trace_gpu_start() != 0)) {
        rank_log("trace: cannot make the CUDA events that time the spans");
        return -1;
    }
    atomic_store(&trace.count, 0);
    snprintf(trace.path, sizeof trace.path, "%s", path != NULL ? path : "");
    trace.role = role, trace.node = node, trace.rank = role == TRACE_AGENT ? -1 : rank;
    trace.gpu = gpu;
    memset(trace.track_used, 0, sizeof trace.track_used);
    trace.pending_count = 0;
    memset(trace.phase_ticks, 0, sizeof trace.phase_ticks);
    trace.steps = 0;
    origin.tsc = kernel_uses_tsc();
    read_both(&origin.ticks, &origin.seconds);
    trace_active = true;
    write_when_interrupted();
    return 0;
}

void trace_stop(void) {
    trace_active = false;
    free(trace.events);
    free(trace.pending);
    if (trace.gpu)
        trace_gpu_stop();
    trace.events = NULL, trace.pending = NULL, trace.gpu = false;
}

// ----------------------------------------------------------------------------
// writing: by hand into a buffer and out with write(2), so that the same code serves a
// signal handler (stdio and printf are not safe there)

typedef struct {
    int fd;
    bool failed;
    size_t len;
    char buf[1 << 16];
} Out;

static void out_flush(Out* o) {
    for (size_t done = 0; done < o->len && !o->failed;) {
        ssize_t n = write(o->fd, o->buf + done, o->len - done);
        if (n < 0 && errno == EINTR)
            continue;
        o->failed = n <= 0;
        done += n > 0 ? (size_t)n : 0;
    }
    o->len = 0;
}

static void out_bytes(Out* o, const char* bytes, size_t n) {
    if (o->len + n > sizeof o->buf)
        out_flush(o);
    if (n > sizeof o->buf) {
        o->failed = true;
        return;
    }
    memcpy(o->buf + o->len, bytes, n);
    o->len += n;
}

static void out_text(Out* o, const char* text) {
    out_bytes(o, text, strlen(text));
}

// v in decimal, with at least min_digits digits (zeros in front).
static void out_int(Out* o, long long v, int min_digits) {
    char digits[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    do {
        digits[sizeof digits - 1 - n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u > 0 || n < min_digits);
    if (v < 0)
        digits[sizeof digits - 1 - n++] = '-';
    out_bytes(o, digits + sizeof digits - n, (size_t)n);
}

// seconds as microseconds with 3 decimals.
static void out_us(Out* o, double seconds) {
    long long ns = (long long)(seconds * 1e9 + 0.5);
    out_int(o, ns / 1000, 1);
    out_text(o, ".");
    out_int(o, ns % 1000, 3);
}

// The track of this process's thread: its agent (rank -1), a rank, or a rank's
// communication thread, in that order on the screen.
static int track_of(int track) {
    return TRACKS * (trace.rank + 1) + track;
}

// `"pid":P,"tid":T`
static void out_track(Out* o, int tid) {
    out_text(o, "\"pid\":");
    out_int(o, trace.node, 1);
    out_text(o, ",\"tid\":");
    out_int(o, tid, 1);
}

// `,"key":v` when v is not negative.
static void out_arg(Out* o, const char* key, long long v) {
    if (v < 0)
        return;
    out_text(o, ",\"");
    out_text(o, key);
    out_text(o, "\":");
    out_int(o, v, 1);
}

static void write_event(Out* o, const TraceEvent* e, double tick) {
    out_text(o, "{\"name\":\"");
    out_text(o, e->name > 0 ? trace.names[e->name] : kind_names[e->kind]);
    out_text(o, "\",\"cat\":\"");
    out_text(o, kind_names[e->kind]);
    out_text(o, "\",\"ph\":\"X\",\"ts\":");
    out_us(o, origin.seconds + (double)(int64_t)(e->start - origin.ticks) * tick);
    out_text(o, ",\"dur\":");
    out_us(o, (double)e->ticks * tick);
    out_text(o, ",");
    out_track(o, track_of(e->track));
    out_text(o, ",\"args\":{\"rank\":");
    out_int(o, trace.rank, 1);
    out_arg(o, "bytes", e->bytes > 0 ? (long long)e->bytes : -1);
    out_arg(o, "epoch", e->epoch);
    out_arg(o, "step", e->step);
    out_text(o, e->unfinished ? ",\"unfinished\":true}},\n" : "}},\n");
}

// A track's name, and its place among the tracks.
static void write_track_name(Out* o, int track) {
    static const char* const suffixes[TRACKS] = {"", " comm", " nccl", " gpu"};
    int tid = track_of(track);
    out_text(o, "{\"name\":\"thread_name\",\"ph\":\"M\",");
    out_track(o, tid);
    out_text(o, ",\"args\":{\"name\":\"");
    out_text(o, trace.rank < 0 ? "node " : "rank ");
    out_int(o, trace.rank < 0 ? trace.node : trace.rank, 1);
    out_text(o, trace.rank < 0 ? " agent" : suffixes[track]);
    out_text(o, "\"}},\n{\"name\":\"thread_sort_index\",\"ph\":\"M\",");
    out_track(o, tid);
    out_text(o, ",\"args\":{\"sort_index\":");
    out_int(o, tid, 1);
    out_text(o, "}},\n");
}

// This process's events, each followed by ",\n"; the calling thread's open spans are
// closed first (marked unfinished), and the GPU's times resolved (not in a signal
// handler, where CUDA may not be called). Returns how many it wrote.
static int write_own_events(Out* o, bool in_signal_handler) {
    if (in_signal_handler)
        trace.gpu = false, trace.pending_count = 0;
    while (self.depth > 0) {
        int event = self.depth <= TRACE_MAX_DEPTH ? self.open[self.depth - 1].event : -1;
        if (event >= 0)
            trace.events[event].unfinished = 1;
        trace_close_span();
    }
    if (trace.pending_count > 0)
        resolve_gpu_spans();
    int count = atomic_load(&trace.count);
    int kept = count < TRACE_CAPACITY ? count : TRACE_CAPACITY;
    for (int track = 0; track < TRACKS; track++)
        if (track == TRACK_RANK || trace.track_used[track])
            write_track_name(o, track);
    double tick = seconds_per_tick();
    for (int i = 0; i < kept; i++)
        write_event(o, &trace.events[i], tick);
    if (count > kept && !in_signal_handler)
        rank_log("trace: %d spans did not fit the buffer of %d and are missing", count - kept,
                 TRACE_CAPACITY);
    return kept;
}

// Opens name for writing into o. Returns 0, or -1 (with a message unless quiet).
static int out_open(Out* o, const char* name, bool quiet) {
    o->len = 0, o->failed = false;
    o->fd = open(name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (o->fd < 0 && !quiet)
        rank_log("trace: cannot write %s: %s", name, strerror(errno));
    return o->fd < 0 ? -1 : 0;
}

// Flushes and closes o, which was written to name. Returns 0, or -1 (with a message
// unless quiet).
static int out_close(Out* o, const char* name, bool quiet) {
    out_flush(o);
    int err = errno;
    if (close(o->fd) != 0 && !o->failed)
        o->failed = true, err = errno;
    if (o->failed && !quiet)
        rank_log("trace: cannot write %s: %s", name, strerror(err));
    return o->failed ? -1 : 0;
}

// The end of a whole file: the process's name, and the list's and the object's ends.
static void out_footer(Out* o) {
    out_text(o, "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":");
    out_int(o, trace.node, 1);
    out_text(o, ",\"args\":{\"name\":\"node ");
    out_int(o, trace.node, 1);
    out_text(o, "\"}}\n],\"displayTimeUnit\":\"ms\"}\n");
}

// path.rankN for rank.
static void part_name(char* out, size_t len, const char* path, int rank) {
    snprintf(out, len, "%s.rank%d", path, rank);
}

static Out out; // one, static: 64 KiB is much for a stack, and a handler may use it

// A worker's part (its events), or with whole the complete file of a process alone.
static int write_file(const char* name, bool whole, bool in_signal_handler) {
    if (out_open(&out, name, in_signal_handler) != 0)
        return -1;
    if (whole)
        out_text(&out, "{\"traceEvents\":[\n");
    int spans = write_own_events(&out, in_signal_handler);
    if (whole)
        out_footer(&out);
    return out_close(&out, name, in_signal_handler) == 0 ? spans : -1;
}

int trace_write_part(void) {
    if (trace.events == NULL || trace.path[0] == '\0')
        return 0;
    char part[TRACE_PATH_BYTES + 16];
    part_name(part, sizeof part, trace.path, trace.rank);
    return write_file(part, false, false) < 0 ? -1 : 0;
}

// Copies the part of rank into o and removes it. Returns 0, or -1 when there is none.
static int append_part(Out* o, const char* path, int rank) {
    char part[TRACE_PATH_BYTES + 16];
    part_name(part, sizeof part, path, rank);
    int fd = open(part, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    out_flush(o);
    ssize_t n;
    while ((n = read(fd, o->buf, sizeof o->buf)) > 0) {
        o->len = (size_t)n;
        out_flush(o);
    }
    close(fd);
    unlink(part);
    return 0;
}

int trace_merge(const char* path, int first_rank, int count) {
    char temporary[TRACE_PATH_BYTES + 16];
    snprintf(temporary, sizeof temporary, "%s.tmp", path);
    if (out_open(&out, temporary, false) != 0)
        return -1;
    out_text(&out, "{\"traceEvents\":[\n");
    int own = trace_active && trace.events != NULL ? write_own_events(&out, false) : 0;
    int written = 0;
    for (int r = first_rank; r < first_rank + count; r++) {
        if (append_part(&out, path, r) == 0)
            written++;
        else
            rank_log("trace: rank %d wrote no events (it ended before it could)", r);
    }
    out_footer(&out);
    if (out_close(&out, temporary, false) != 0 || rename(temporary, path) != 0) {
        unlink(temporary);
        return -1;
    }
    if (count > 0)
        printf("Trace: %s (events of %d of %d ranks)\n", path, written, count);
    else
        printf("Trace: %s (%d spans)\n", path, own);
    return 0;
}

// SIGINT or SIGTERM: what was recorded is written as the run would have at its end (a
// worker's part, or a process alone's whole file), then the signal ends the process.
static void write_on_signal(int sig) {
    if (write_file(trace.signal_path, trace.role == TRACE_ALONE, true) >= 0 &&
        trace.role == TRACE_ALONE)
        rename(trace.signal_path, trace.path);
    signal(sig, SIG_DFL);
    raise(sig);
}

// A worker's or a process alone's recording survives an interruption (an agent merges
// after its workers whatever happened).
static void write_when_interrupted(void) {
    if (trace.role == TRACE_AGENT || trace.path[0] == '\0')
        return;
    if (trace.role == TRACE_ALONE)
        snprintf(trace.signal_path, sizeof trace.signal_path, "%s.tmp", trace.path);
    else
        part_name(trace.signal_path, sizeof trace.signal_path, trace.path, trace.rank);
    struct sigaction on = {.sa_handler = write_on_signal, .sa_flags = SA_RESETHAND};
    sigemptyset(&on.sa_mask);
    sigaction(SIGINT, &on, NULL);
    sigaction(SIGTERM, &on, NULL);
}

// ----------------------------------------------------------------------------
// where the time goes

void trace_phase_row(float row[TRACE_PHASE_ROW], double training_seconds) {
    double covered = 0.0, tick = seconds_per_tick();
    for (int p = 0; p < PHASE_OTHER; p++) {
        row[p] = (float)(trace.phase_ticks[p] * tick);
        covered += row[p];
    }
    row[PHASE_OTHER] = (float)(training_seconds > covered ? training_seconds - covered : 0.0);
    row[TRACE_PHASES] = (float)trace.steps;
}

// One line of the table: phase p's time per step, mean, min and max over the ranks, and
// its share of the mean training time; none for a phase that no rank spent time in (lesson
// 01's all-reduce, graph/fused on the CPU).
static void print_phase(const float* rows, int world_size, int p, double mean_total) {
    double sum = 0.0, sum_per_step = 0.0, low = 0.0, high = 0.0;
    for (int r = 0; r < world_size; r++) {
        const float* row = rows + (size_t)r * TRACE_PHASE_ROW;
        double per_step = row[p] / (row[TRACE_PHASES] > 0 ? row[TRACE_PHASES] : 1.0f);
        sum += row[p];
        sum_per_step += per_step;
        low = r == 0 || per_step < low ? per_step : low;
        high = r == 0 || per_step > high ? per_step : high;
    }
    if (sum == 0.0)
        return;
    double share = mean_total > 0.0 ? 100.0 * sum / world_size / mean_total : 0.0;
    printf("  %-11s %10.1f %10.1f %10.1f %7.1f%%\n", phase_names[p],
           1e6 * sum_per_step / world_size, 1e6 * low, 1e6 * high, share);
}

// Prints the phase table from every rank's row (rows: world_size x TRACE_PHASE_ROW).
static void print_phases(const float* rows, int world_size) {
    double total = 0.0;
    for (int r = 0; r < world_size; r++)
        for (int p = 0; p < TRACE_PHASES; p++)
            total += rows[(size_t)r * TRACE_PHASE_ROW + p];
    printf("Where the time goes (per optimizer step, us; eval spread over the steps; min and max "
           "over %d rank%s):\n",
           world_size, world_size > 1 ? "s" : "");
    printf("  %-11s %10s %10s %10s %8s\n", "phase", "mean", "min", "max", "share");
    for (int p = 0; p < TRACE_PHASES; p++)
        print_phase(rows, world_size, p, total / world_size);
}

int trace_report_phases(Communicator* comm, int world_size, double training_seconds, bool print) {
    float own[TRACE_PHASE_ROW];
    trace_phase_row(own, training_seconds);
    float* rows = own;
    if (comm != NULL && world_size > 1) {
        rows = malloc((size_t)world_size * sizeof own);
        if (rows == NULL || comm_allgather_floats(comm, "phases", own, TRACE_PHASE_ROW, rows)) {
            free(rows);
            return -1;
        }
    }
    if (print)
        print_phases(rows, world_size);
    if (rows != own)
        free(rows);
    return 0;
}
