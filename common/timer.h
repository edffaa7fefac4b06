/*
 * timer.h - wall-clock time for measuring training, from a monotonic clock.
 *
 * APIs: timer_seconds, timer_backoff_us.
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

// The pause of a polling wait that has lasted waited_s, in microseconds: 0 (yield, do not
// sleep) for its first spin_s, then half the wait so far, at most max_us. A short wait is
// not stretched by a sleep (timer slack alone adds 50 us on Linux); a long one costs little
// CPU and ends at most half again as late as what it waits for.
static inline unsigned timer_backoff_us(double waited_s, double spin_s, unsigned max_us) {
    if (waited_s < spin_s)
        return 0;
    double half_us = waited_s * 1e6 / 2;
    return half_us < max_us ? (unsigned)half_us + 1 : max_us;
}

#ifdef __cplusplus
}
#endif

#endif
