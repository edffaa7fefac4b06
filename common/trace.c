/*
 * trace.c - spans recorded into a buffer allocated once, written as Chrome trace events,
 * and summed into phases (see trace.h).
 */
#include "trace.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "collective.h"
#include "timer.h"
#include "trace_gpu.h"

// Spans one process keeps: about 16 000 in a run at defaults; 32 bytes each.
#define TRACE_CAPACITY (1 << 18)
#define TRACE_NAME_BYTES 24
#define TRACE_MAX_NAMES 256
#define TRACE_MAX_DEPTH 16
#define TRACE_PATH_BYTES 4096

// A span, written into the buffer when it opens and completed when it closes: small, as
// a step writes several.
typedef struct {
    double start;        // CLOCK_MONOTONIC
    float seconds;       // its length
    uint32_t bytes;      // a collective's size (0: none)
    int32_t epoch, step; // what a collective or an epoch serves (-1: none)
    uint8_t kind;        // TraceKind
    uint8_t comm_thread; // on the communication thread's track
    uint8_t unfinished;  // still open when the events were written
    uint8_t name;        // in names[]; 0: the kind's own name
} TraceEvent;

// A span still open on a thread.
typedef struct {
    double start;
    int event; // its place in the buffer, or -1 (the buffer was full)
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
    int node, rank;
    bool comm_track_used;
    bool gpu;
    PendingSpan* pending; // (TRACE_GPU_MARKS / 2) spans timed on the GPU, not resolved yet
    int pending_count;
    double phase_seconds[TRACE_PHASES];
    long steps;
} trace = {.name_count = 1, .naming = PTHREAD_MUTEX_INITIALIZER};

static _Thread_local TraceThread self;

static const char* const kind_names[TRACE_KINDS] = {
    "forward", "loss",       "backward",   "all-reduce", "optimizer",        "eval",
    "epoch",   "checkpoint", "collective", "setup",      "bucket all-reduce"};

static const char* const phase_names[TRACE_PHASES] = {"forward",   "backward", "all-reduce",
                                                      "optimizer", "eval",     "other"};

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
    case TRACE_EVAL:
        return PHASE_EVAL;
    default:
        return TRACE_PHASES;
    }
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
                                              .comm_thread = t->comm,
                                              .name = name != NULL ? name_index(name) : 0};
    s->gpu_begin = trace.gpu && !t->comm ? trace_gpu_mark() : -1;
    s->start = timer_seconds();
}

// Adds a span's time to its phase.
static void count_phase(TraceKind kind, double seconds) {
    TracePhase phase = trace_kind_phase(kind);
    if (phase == TRACE_PHASES)
        return;
    trace.phase_seconds[phase] += seconds;
    trace.steps += kind == TRACE_OPTIMIZER;
}

// The spans timed on the GPU since the last call get their GPU times (the host waits
// for the GPU to get past the last of them), and the event slots are used again.
static void resolve_gpu_spans(void) {
    for (int i = 0; i < trace.pending_count; i++) {
        PendingSpan* p = &trace.pending[i];
        double start = trace_gpu_time(p->gpu_begin), end = trace_gpu_time(p->gpu_end);
        if (start < 0.0 || end < 0.0)
            continue; // the GPU failed: the host's times stay
        if (p->counts)
            count_phase(p->kind, end - start);
        if (p->event >= 0)
            trace.events[p->event].start = start,
            trace.events[p->event].seconds = (float)(end - start);
    }
    trace.pending_count = 0;
    trace_gpu_recycle();
}

// Completes a span that closed: its phase now (host times), or once the GPU ran it.
static void close_span(const OpenSpan* s, double seconds) {
    if (s->event >= 0)
        trace.events[s->event].start = s->start, trace.events[s->event].seconds = (float)seconds;
    int gpu_end = s->gpu_begin >= 0 ? trace_gpu_mark() : -1;
    if (gpu_end >= 0 && trace.pending != NULL)
        trace.pending[trace.pending_count++] =
            (PendingSpan){s->event, s->counts, s->kind, s->gpu_begin, gpu_end};
    else if (s->counts)
        count_phase(s->kind, seconds);
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
    double seconds = timer_seconds() - s->start;
    t->epochs_open -= s->kind == TRACE_EPOCH;
    if (t->comm)
        trace.comm_track_used = true;
    close_span(s, seconds);
}

void trace_thread_is_comm(void) {
    self.comm = true;
}

// ----------------------------------------------------------------------------
// starting and stopping

int trace_probe(const char* path, int first_rank, int count, char* why, size_t why_len) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(why, why_len, "--trace %s: is a directory; give a file's name", path);
        return -1;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0 || strlen(path) + 16 > TRACE_PATH_BYTES) {
        snprintf(why, why_len, "--trace %s: cannot write there: %s", path,
                 fd < 0 ? strerror(errno) : "the name is too long");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    for (int r = first_rank; r < first_rank + count; r++) {
        char part[TRACE_PATH_BYTES + 16];
        snprintf(part, sizeof part, "%s.rank%d", path, r);
        unlink(part);
    }
    return 0;
}

int trace_start(const char* path, int node, int rank, bool gpu) {
    trace_active = false; // a forked worker forgets its parent's spans
    self = (TraceThread){0};
    if (trace.events == NULL && path != NULL) {
        // Touched now, so that no span pays for a page fault.
        if ((trace.events = malloc(TRACE_CAPACITY * sizeof *trace.events)) == NULL) {
            rank_log("trace: out of memory for %d spans", TRACE_CAPACITY);
            return -1;
        }
        memset(trace.events, 0, TRACE_CAPACITY * sizeof *trace.events);
    }
    if (gpu && trace.pending == NULL &&
        ((trace.pending = malloc(TRACE_GPU_MARKS / 2 * sizeof *trace.pending)) == NULL ||
         trace_gpu_start() != 0)) {
        rank_log("trace: cannot make the CUDA events that time the spans");
        return -1;
    }
    atomic_store(&trace.count, 0);
    snprintf(trace.path, sizeof trace.path, "%s", path != NULL ? path : "");
    trace.node = node, trace.rank = rank, trace.gpu = gpu;
    trace.comm_track_used = false;
    trace.pending_count = 0;
    memset(trace.phase_seconds, 0, sizeof trace.phase_seconds);
    trace.steps = 0;
    trace_active = true;
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
// writing

// The track of this process's thread: its agent (rank -1), a rank, or a rank's
// communication thread, in that order on the screen.
static int track_of(bool comm_thread) {
    return 2 * (trace.rank + 1) + (comm_thread ? 1 : 0);
}

static void write_event(FILE* f, const TraceEvent* e) {
    fprintf(f,
            "{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"X\",\"ts\":%.3f,\"dur\":%.3f,\"pid\":%d,"
            "\"tid\":%d,\"args\":{\"rank\":%d",
            e->name > 0 ? trace.names[e->name] : kind_names[e->kind], kind_names[e->kind],
            1e6 * e->start, 1e6 * e->seconds, trace.node, track_of(e->comm_thread), trace.rank);
    if (e->bytes > 0)
        fprintf(f, ",\"bytes\":%u", e->bytes);
    if (e->epoch >= 0)
        fprintf(f, ",\"epoch\":%d", e->epoch);
    if (e->step >= 0)
        fprintf(f, ",\"step\":%d", e->step);
    fprintf(f, "%s}},\n", e->unfinished ? ",\"unfinished\":true" : "");
}

// A track's name, and its place among the tracks.
static void write_track_name(FILE* f, bool comm_thread) {
    char name[64];
    if (trace.rank < 0)
        snprintf(name, sizeof name, "node %d agent", trace.node);
    else
        snprintf(name, sizeof name, "rank %d%s", trace.rank, comm_thread ? " comm" : "");
    int tid = track_of(comm_thread);
    fprintf(f,
            "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"args\":{\"name\":"
            "\"%s\"}},\n{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,"
            "\"args\":{\"sort_index\":%d}},\n",
            trace.node, tid, name, trace.node, tid, tid);
}

// This process's events, each followed by ",\n"; the calling thread's open spans are
// closed first (marked unfinished), and the GPU's times resolved. Returns how many.
static int write_own_events(FILE* f) {
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
    write_track_name(f, false);
    if (trace.comm_track_used)
        write_track_name(f, true);
    for (int i = 0; i < kept; i++)
        write_event(f, &trace.events[i]);
    if (count > kept)
        rank_log("trace: %d spans did not fit the buffer of %d and are missing", count - kept,
                 TRACE_CAPACITY);
    return kept;
}

// Closes f, which was written to path; says why if that failed.
static int close_written(FILE* f, const char* path) {
    int failed = ferror(f);
    if (fclose(f) != 0 || failed) {
        rank_log("trace: cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int trace_write_part(void) {
    if (trace.events == NULL || trace.path[0] == '\0')
        return 0;
    char part[TRACE_PATH_BYTES + 16];
    snprintf(part, sizeof part, "%s.rank%d", trace.path, trace.rank);
    FILE* f = fopen(part, "w");
    if (f == NULL) {
        rank_log("trace: cannot write %s: %s", part, strerror(errno));
        return -1;
    }
    write_own_events(f);
    return close_written(f, part);
}

// Copies the part of rank into out and removes it. Returns 0, or -1 when there is none.
static int append_part(FILE* out, const char* path, int rank) {
    char part[TRACE_PATH_BYTES + 16], chunk[1 << 16];
    snprintf(part, sizeof part, "%s.rank%d", path, rank);
    FILE* in = fopen(part, "r");
    if (in == NULL)
        return -1;
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, in)) > 0)
        fwrite(chunk, 1, n, out);
    fclose(in);
    unlink(part);
    return 0;
}

int trace_merge(const char* path, int first_rank, int count) {
    char temporary[TRACE_PATH_BYTES + 16];
    snprintf(temporary, sizeof temporary, "%s.tmp", path);
    FILE* f = fopen(temporary, "w");
    if (f == NULL) {
        rank_log("trace: cannot write %s: %s", temporary, strerror(errno));
        return -1;
    }
    fprintf(f, "{\"traceEvents\":[\n");
    int own = trace_active && trace.events != NULL ? write_own_events(f) : 0;
    int written = 0;
    for (int r = first_rank; r < first_rank + count; r++) {
        if (append_part(f, path, r) == 0)
            written++;
        else
            rank_log("trace: rank %d wrote no events (it ended before it could)", r);
    }
    fprintf(f,
            "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"args\":{\"name\":\"node "
            "%d\"}}\n],\"displayTimeUnit\":\"ms\"}\n",
            trace.node, trace.node);
    if (close_written(f, temporary) != 0 || rename(temporary, path) != 0) {
        unlink(temporary);
        return -1;
    }
    if (count > 0)
        printf("Trace: %s (events of %d of %d ranks)\n", path, written, count);
    else
        printf("Trace: %s (%d spans)\n", path, own);
    return 0;
}

// ----------------------------------------------------------------------------
// where the time goes

void trace_phase_row(float row[TRACE_PHASE_ROW], double training_seconds) {
    double covered = 0.0;
    for (int p = 0; p < PHASE_OTHER; p++) {
        row[p] = (float)trace.phase_seconds[p];
        covered += trace.phase_seconds[p];
    }
    row[PHASE_OTHER] = (float)(training_seconds > covered ? training_seconds - covered : 0.0);
    row[TRACE_PHASES] = (float)trace.steps;
}

// One line of the table: phase p's time per step, mean, min and max over the ranks, and
// its share of the mean training time.
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
    double share = mean_total > 0.0 ? 100.0 * sum / world_size / mean_total : 0.0;
    printf("  %-11s %10.1f %10.1f %10.1f %7.1f%%\n", phase_names[p],
           1e6 * sum_per_step / world_size, 1e6 * low, 1e6 * high, share);
}

void trace_print_phases(const float* rows, int world_size) {
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
        trace_print_phases(rows, world_size);
    if (rows != own)
        free(rows);
    return 0;
}
