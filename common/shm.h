/*
 * shm.h - byte channels in shared memory between the processes of one machine.
 *
 * A channel is a ring buffer with one producer and one consumer, in a mapping that a
 * parent makes (MAP_SHARED | MAP_ANONYMOUS) before it forks the processes that use it.
 * Bytes cross it with one copy in and one copy out, no system call while both sides
 * are busy: what the ring all-reduce wants between ranks of one node, where a socket
 * costs a trip through the kernel for every piece.
 *
 * A link is one direction between two processes: a channel, or a plain socket where
 * the peer lives on another machine. Beside a channel a link keeps a socket to the
 * peer that carries no data: when the peer dies the kernel closes it, and that is how
 * a waiting process learns of the death (shared memory itself says nothing).
 *
 * As in net.h, every call has a deadline (a timer_seconds() value) and answers with a
 * NetStatus. Waiting spins for a few looks, yields the core for up to 100 us, then
 * sleeps on a futex in naps of at most 2 ms, checking the peers' sockets and the
 * deadline between naps: more processes than cores never burn the machine.
 *
 * APIs: ShmRegion, ShmChannel, ShmLink, SHM_MIN_CHANNEL_BYTES, SHM_MAX_CHANNEL_BYTES,
 *       SHM_DEFAULT_CHANNEL_BYTES, shm_region_create, shm_region_channel, shm_region_count,
 *       shm_region_unmap, shm_channel_capacity, shm_exchange, shm_send_all, shm_recv_all.
 */
#ifndef SHM_H
#define SHM_H

#include <stddef.h>
#include <sys/uio.h>

#include "net.h"

#ifdef __cplusplus
extern "C" {
#endif

// Channel capacities: a power of two in [SHM_MIN_CHANNEL_BYTES, SHM_MAX_CHANNEL_BYTES].
#define SHM_MIN_CHANNEL_BYTES 64
#define SHM_MAX_CHANNEL_BYTES (1u << 30)
// Holds one chunk of a 1 MiB all-reduce between 2 ranks with room to spare, so a
// sender never waits for its receiver at that size.
#define SHM_DEFAULT_CHANNEL_BYTES (1u << 20)

typedef struct ShmRegion ShmRegion;   // one mapping: a header, then count channels
typedef struct ShmChannel ShmChannel; // one producer, one consumer

// A shared anonymous mapping of count channels (1 to 65536) of channel_bytes each (0:
// the default), for the processes forked after this call; fresh for each job, as a
// channel's counters carry on from whatever the last user left. NULL with errno (EINVAL: a
// bad count or capacity; ENOMEM) on failure.
ShmRegion* shm_region_create(int count, size_t channel_bytes);
// Channel i of region, 0 <= i < shm_region_count(region).
ShmChannel* shm_region_channel(ShmRegion* region, int i);
int shm_region_count(const ShmRegion* region);
// Unmaps region from this process; the others keep their own mapping of it.
void shm_region_unmap(ShmRegion* region);
size_t shm_channel_capacity(const ShmChannel* channel);

// One direction between this process and a peer.
typedef struct {
    ShmChannel* channel; // NULL: the bytes travel over fd itself, a non-blocking socket
    int fd;              // the socket to the peer; beside a channel only its hang-up counts
} ShmLink;

// Sends the pieces send[0..send_count) on link to while receiving recv[0..recv_count)
// from link from, both at once (see net_exchange: one at a time deadlocks a ring once
// messages outgrow the buffers). At most NET_MAX_PIECES pieces each. Bit i of
// add_floats set: piece recv[i] holds floats to which the incoming floats are added
// (dst[k] += incoming[k]) instead of being overwritten; its length must be a multiple
// of 4, and from must be a channel (EINVAL otherwise).
NetStatus shm_exchange(ShmLink to, const struct iovec* send, int send_count, ShmLink from,
                       const struct iovec* recv, int recv_count, unsigned add_floats,
                       double deadline);
NetStatus shm_send_all(ShmLink to, const void* buf, size_t len, double deadline);
NetStatus shm_recv_all(ShmLink from, void* buf, size_t len, double deadline);

#ifdef __cplusplus
}
#endif

#endif
