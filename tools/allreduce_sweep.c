/*
 * allreduce_sweep.c - sizes, checks and timings of an all-reduce (see allreduce_sweep.h).
 *
 * time is the slowest rank's mean over the timed iterations; algbw = bytes / time; busbw = algbw *
 * 2 (N - 1) / N, the traffic each link of a ring carries, comparable across rank counts
 * (nccl-tests' convention). #wrong counts the elements that differ from the exact sum.
 */
#include "allreduce_sweep.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "timer.h"

int sweep_parse_bytes(const char* flag, const char* value, long* out, char* why, size_t why_len) {
    char* end = NULL;
    long v = value != NULL ? strtol(value, &end, 10) : 0;
    long unit = 1;
    if (end != NULL && *end != '\0' && strchr("KMG", *end) != NULL) {
        unit = *end == 'K' ? 1L << 10 : *end == 'M' ? 1L << 20 : 1L << 30;
        end++;
    }
    if (value == NULL || end == value || *end != '\0' || v < 1 || v > (1L << 30) / unit ||
        v * unit < 4 || v * unit % 4 != 0) {
        snprintf(why, why_len,
                 "%s must be a multiple of 4 bytes in [4, 1G] (e.g. 8, 64K, 4M), got '%s'", flag,
                 value != NULL ? value : "(nothing)");
        return -1;
    }
    *out = v * unit;
    return 0;
}

// Enough iterations for about 0.2 s of traffic, at least 20 and at most 2000;
// the same on every rank, since it depends only on the size.
static int iterations_for(long bytes) {
    long iters = 200000000L / (bytes + 20000);
    return iters < 20 ? 20 : iters > 2000 ? 2000 : (int)iters;
}

// Rank-dependent integers, exact in floats, whose sum over the ranks is known.
static float value_at(int rank, size_t i) {
    return (float)((rank + 1) * (int)(i % 7));
}

static int count_wrong(const SweepEngine* e, float* buf, float* host, size_t count) {
    for (size_t i = 0; i < count; i++)
        host[i] = value_at(e->rank, i);
    RETURN_IF_FAILED(e->k->upload(buf, host, count * sizeof(float)));
    RETURN_IF_FAILED(e->allreduce_sum(e->ctx, buf, count));
    RETURN_IF_FAILED(e->k->download(host, buf, count * sizeof(float)));
    int wrong = 0, ranks_sum = e->world_size * (e->world_size + 1) / 2;
    for (size_t i = 0; i < count; i++)
        wrong += host[i] != (float)(ranks_sum * (int)(i % 7));
    return wrong;
}

// The slowest rank's seconds, on every rank: what the collective cost the job, as
// nccl-tests reports it. Each rank puts its time in its own slot; a sum fills them all.
static int slowest_seconds(const SweepEngine* e, double mine, double* slowest) {
    size_t n = (size_t)e->world_size;
    float* host = calloc(n, sizeof(float));
    float* slots = e->k->alloc(n * sizeof(float));
    int err = host == NULL || slots == NULL;
    if (!err) {
        host[e->rank] = (float)mine;
        err = e->k->upload(slots, host, n * sizeof(float)) || e->allreduce_sum(e->ctx, slots, n) ||
              e->k->download(host, slots, n * sizeof(float));
    }
    *slowest = 0.0;
    for (size_t r = 0; !err && r < n; r++)
        *slowest = host[r] > *slowest ? host[r] : *slowest;
    if (slots != NULL)
        e->k->release(slots);
    free(host);
    return err ? -1 : 0;
}

static int sweep_size(const SweepEngine* e, float* buf, float* host, long bytes) {
    size_t count = (size_t)bytes / sizeof(float);
    int wrong = count_wrong(e, buf, host, count);
    RETURN_IF_FAILED(wrong < 0 ? -1 : 0);
    int iters = iterations_for(bytes);
    for (int i = 0; i < 5; i++) // warm-up
        RETURN_IF_FAILED(e->allreduce_sum(e->ctx, buf, count));
    RETURN_IF_FAILED(e->barrier(e->ctx));
    double start = timer_seconds();
    for (int i = 0; i < iters; i++)
        RETURN_IF_FAILED(e->allreduce_sum(e->ctx, buf, count));
    double seconds;
    RETURN_IF_FAILED(slowest_seconds(e, (timer_seconds() - start) / iters, &seconds));
    double algbw = (double)bytes / seconds / 1e9;
    double busbw = algbw * 2.0 * (e->world_size - 1) / e->world_size;
    if (e->rank == 0)
        printf("%12ld %10zu %10.2f %12.3f %12.3f %8d\n", bytes, count, seconds * 1e6, algbw, busbw,
               wrong);
    return 0;
}

int sweep_run(const SweepEngine* e, long min_bytes, long max_bytes) {
    size_t max_count = (size_t)max_bytes / sizeof(float);
    float* host = malloc(max_count * sizeof(float));
    float* buf = e->k->alloc(max_count * sizeof(float));
    int err = host == NULL || buf == NULL;
    if (e->rank == 0 && !err)
        printf("# all-reduce of floats (sum), backend %s, %d ranks; time: the slowest rank's mean "
               "over iterations\n"
               "%12s %10s %10s %12s %12s %8s\n",
               e->name, e->world_size, "size(B)", "count", "time(us)", "algbw(GB/s)", "busbw(GB/s)",
               "#wrong");
    // A first untimed round at the first size, as long as a timed one: the first hundreds
    // of all-reduces after the fork run slower (pages touched the first time, ranks not yet
    // spread over the cores), which would otherwise land on the first size's time.
    for (int i = 0, iters = iterations_for(min_bytes); !err && i < iters; i++)
        err = e->allreduce_sum(e->ctx, buf, (size_t)min_bytes / sizeof(float));
    for (long bytes = min_bytes; !err && bytes <= max_bytes; bytes *= 2)
        err = sweep_size(e, buf, host, bytes);
    if (buf != NULL)
        e->k->release(buf);
    free(host);
    return err ? -1 : 0;
}
