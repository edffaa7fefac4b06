/*
 * timer.h - wall-clock time for measuring training, from a monotonic clock.
 *
 * APIs: timer_seconds.
 */
#ifndef TIMER_H
#define TIMER_H

#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

// Seconds since an arbitrary fixed point; only differences mean anything.
static inline double timer_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#ifdef __cplusplus
}
#endif

#endif
