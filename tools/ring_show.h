/*
 * ring_show.h - the ring all-reduce, step by step, for a class to watch (allreduce_bench --show).
 *
 * Every rank starts with (i % 9 + 1) x 10^rank at element i, so that each digit of a
 * sum is one rank's share: 3 + 30 + 300 = 333 says that all three ranks were added. The
 * ranks run one real all-reduce of the ring (common/collective.c), whose step hook
 * (comm_set_ring_step_hook) copies each rank's buffer after every step into memory that
 * all ranks share; rank 0 prints each step as soon as every rank has done it: which
 * chunk went where, and every rank's buffer, with the chunk just received in brackets.
 * With slow_ms every rank pauses after each step, and the whole ring waits with it.
 *
 * APIs: RingShow, RING_SHOW_MAX_RANKS, RING_SHOW_MAX_COUNT, ring_show_create, ring_show_run,
 *       ring_show_free.
 */
#ifndef RING_SHOW_H
#define RING_SHOW_H

#include "collective.h"

#define RING_SHOW_MAX_RANKS 7  // 10^6: the most a float holds with every digit exact
#define RING_SHOW_MAX_COUNT 16 // floats per rank: one line of a terminal, about

typedef struct RingShow RingShow;

// The shared memory of a show of count floats on ranks ranks, made before the ranks are
// forked so that each inherits it. NULL after a message.
RingShow* ring_show_create(int ranks, int count, int slow_ms, double timeout_s);
// In rank's process: one all-reduce on comm (a ring), shown. 0 if every rank ended with
// the sum, or -1 after a message.
int ring_show_run(RingShow* show, Communicator* comm, int rank);
void ring_show_free(RingShow* show);

#endif
