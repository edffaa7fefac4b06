/*
 * collective.h - what ranks do together: all-reduce, broadcast, barrier.
 *
 * One small interface, two engines (and a third a program may bring, such as MPI):
 *   - NCCL on GPUs, one rank per GPU;
 *   - a ring over sockets, the algorithm NCCL and gloo use: reduce-scatter, then
 *     all-gather. It serves CPU ranks, and GPU ranks that share a GPU (it stages
 *     through host memory). Between ranks of one machine its bytes may travel
 *     through channels in shared memory instead (shm.h), each direction of the
 *     ring on its own: sockets stay for neighbours on other machines.
 * Buffers are in the memory of the device that the Kernels table drives.
 * Every call has a deadline (timeout_s from its start); a peer that fails or
 * goes away makes the call return -1 with a message naming that peer, never hang.
 * NCCL runs on a stream of its own (non-blocking), ordered after the model's
 * kernels, which run on device_stream() (device.h), by an event recorded there
 * before each collective.
 *
 * APIs: Backend, CommSettings, HostCollectives, Communicator, CommCall, COMM_CALL, COMM_ONCE,
 *       comm_choose_backend, comm_choose_transport,
 * comm_ring_socketpairs, comm_ring_keep_own, comm_ring_shm, comm_ring_connect_tcp, comm_init_ring,
 * comm_init_ring_shm, comm_init_ring_links, comm_init_host, NcclIdTransport, NcclIdRoute,
 * comm_init_nccl, comm_nccl_version, comm_allreduce_sum, comm_allreduce_mean, comm_broadcast,
 *       comm_barrier, comm_allgather_floats, comm_allgather_u64, comm_allreduce_mean_start, comm_wait_all,
 *       comm_async_seconds, comm_abort, comm_destroy,
 *       comm_backend, RingStep, RingStepHook, comm_ring_chunk_begin,
 *       comm_set_ring_step_hook.
 */
#ifndef COLLECTIVE_H
#define COLLECTIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "shm.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { BACKEND_RING, BACKEND_NCCL, BACKEND_HOST } Backend;

// Collectives on host memory that a program brings along (lesson 03's MPI under mpirun):
// the communicator stages GPU buffers through the host for them, as it does for the ring.
typedef struct {
    const char* name; // "mpi"
    int (*allreduce_sum)(void* ctx, float* buf, size_t count);
    int (*broadcast)(void* ctx, float* buf, size_t count, int root);
    int (*barrier)(void* ctx);
    void* ctx;
} HostCollectives;

typedef struct Communicator Communicator;

// What a collective is for, as its caller names it: its fingerprint. Every rank must make
// the same calls in the same order. The first call that differs fails on the ranks it
// involves, naming both sides (a skipped all-reduce, a rank a step behind): the ring
// checks the fingerprint in the frame of every message; NCCL and a program's host
// collectives compare it in one small collective before their first call, and before
// every call under --debug.
typedef struct {
    const char* what; // "gradients", "train loss"...: COMM_WHAT_BYTES - 1 characters count
    int epoch;        // -1: not in an epoch
    int step;         // -1: not in a step
} CommCall;
#define COMM_WHAT_BYTES 20
#define COMM_CALL(what, epoch, step) ((CommCall){(what), (epoch), (step)})
#define COMM_ONCE(what) COMM_CALL((what), -1, -1)

typedef struct {
    int rank;         // this process, 0 .. world_size - 1
    int world_size;   // how many ranks take part
    double timeout_s; // deadline of every call, from its start
    bool debug;       // print every step on stderr
    const Kernels* k; // the device whose memory holds the buffers
} CommSettings;

// The sockets of a ring of processes on one machine, made before they are forked:
// socketpair i carries rank i's sends to rank i + 1. Returns 0 or -1.
int comm_ring_socketpairs(int (*fds)[2], int world_size);
// In rank's process: closes every end but its own two (send to the right, receive
// from the left).
void comm_ring_keep_own(int (*fds)[2], int world_size, int rank, int* send_fd, int* recv_fd);

// Shared memory for the same ring (made before the fork, beside comm_ring_socketpairs):
// channel i, of channel_bytes (0: SHM_DEFAULT_CHANNEL_BYTES), carries rank i's sends to
// rank i + 1; the socketpairs then carry no data, but tell each rank when a neighbour
// dies. NULL, with a message, on failure. The parent unmaps it (shm_region_unmap) once
// the ranks are forked, as it closes its copies of the sockets.
ShmRegion* comm_ring_shm(int world_size, size_t channel_bytes);

// A ring across machines over TCP: connects to the right neighbour at
// right_addr:right_port (retrying until the deadline) and accepts the left one on
// listen_fd; both sides say which rank they are, and strangers are turned away.
int comm_ring_connect_tcp(int listen_fd, int rank, int world_size, const char* right_addr,
                          int right_port, double timeout_s, int* send_fd, int* recv_fd);

// The engine for ranks workers on a node with gpus GPUs, as request ("auto", "nccl"
// or "ring") asks: auto is NCCL when every worker has a GPU of its own and the build
// has NCCL, the ring otherwise. Returns 0, or -1 with the reason in why when NCCL is
// asked for and cannot serve.
int comm_choose_backend(const char* request, int gpus, int ranks, Backend* backend, char* why,
                        size_t why_len);

// How the ring's bytes travel between ranks of one node, as request ("auto", "shm" or
// "socket") asks: auto is shared memory for the ring. Only the ring has a transport
// (NCCL moves its own bytes). Returns 0 with *shm set, or -1 with the reason in why.
int comm_choose_transport(const char* request, Backend backend, bool* shm, char* why,
                          size_t why_len);

// A ring whose sockets are already connected: send_fd to rank + 1, recv_fd from
// rank - 1 (mod world_size). The communicator owns both from now on.
int comm_init_ring(Communicator** comm, CommSettings s, int send_fd, int recv_fd);

// In rank's process, after comm_ring_keep_own: a ring whose bytes travel through the
// channels of shm (from comm_ring_shm), beside the two sockets of comm_ring_keep_own. The
// communicator owns the sockets and this process's mapping of shm from now on.
int comm_init_ring_shm(Communicator** comm, CommSettings s, ShmRegion* shm, int send_fd,
                       int recv_fd);

// The general form: each direction a socket ({NULL, fd}) or a channel beside a socket
// to the same neighbour ({channel, fd}); both ends of a direction must agree. Lesson 03
// joins a node's ranks by channels and the nodes by TCP. The communicator owns both
// sockets, not the channels' mapping.
int comm_init_ring_links(Communicator** comm, CommSettings s, ShmLink send, ShmLink recv);

// A communicator whose collectives are ops (see HostCollectives).
int comm_init_host(Communicator** comm, CommSettings s, HostCollectives ops);

#define COMM_NCCL_ID_BYTES 128

// How NCCL's unique id, which rank 0 makes, reaches every rank: the one thing NCCL needs
// from outside before its ranks can find each other.
typedef enum {
    NCCL_ID_BY_RING,      // around a ring's sockets (comm_ring_keep_own's ends), each rank
                          // passing it on; the sockets are closed afterwards
    NCCL_ID_BY_RELAY,     // through a channel to a relay (lesson 03's agent): rank 0 sends
                          // it there, every other rank receives it from there
    NCCL_ID_BY_BROADCAST, // by a broadcast the program brings (MPI_Bcast under mpirun)
} NcclIdTransport;

typedef struct {
    NcclIdTransport transport;
    int send_fd, recv_fd; // BY_RING: to rank + 1, from rank - 1
    int relay_fd;         // BY_RELAY: the channel to the relay (non-blocking)
    int (*broadcast)(void* bytes, size_t len, int root); // BY_BROADCAST
} NcclIdRoute;

// An NCCL communicator: rank 0 makes the unique id, route carries it to every rank, and
// init, which does not block, is polled until the deadline, then aborted.
int comm_init_nccl(Communicator** comm, CommSettings s, const NcclIdRoute* route);
// The NCCL version as "2.28.9", or "none" in builds without NCCL.
const char* comm_nccl_version(void);

int comm_allreduce_sum(Communicator* comm, float* buf, size_t count, CommCall call);
int comm_allreduce_mean(Communicator* comm, float* buf, size_t count, CommCall call);
int comm_broadcast(Communicator* comm, float* buf, size_t count, int root, CommCall call);
int comm_barrier(Communicator* comm);

// Collectives that run while the caller goes on computing (lesson 04's gradient
// buckets): _start queues the all-reduce on this rank's communication thread (the ring)
// or on NCCL's stream, in the order started, and returns; comm_wait_all waits for every
// one started (each has its deadline) and says whether all succeeded. Until then buf
// must stay as it is, and the caller makes no other call on comm (any other collective
// waits for the started ones first).
int comm_allreduce_mean_start(Communicator* comm, float* buf, size_t count, CommCall call);
int comm_wait_all(Communicator* comm);
// Seconds the collectives started and waited for have run on the communication thread:
// what overlapping could hide. -1 for NCCL, whose collectives the host does not see run.
double comm_async_seconds(const Communicator* comm);
// all (world_size x n) = every rank's row mine (n), on every rank: one small all-reduce of
// rows that only their own rank fills. what names it.
int comm_allgather_floats(Communicator* comm, const char* what, const float* mine, size_t n,
                          float* all);
// all (world_size) = every rank's mine, on every rank: a hash, a count. what names it.
int comm_allgather_u64(Communicator* comm, const char* what, uint64_t mine, uint64_t* all);
// Ends the communicator at once, even in the middle of a failed call.
void comm_abort(Communicator* comm);
void comm_destroy(Communicator* comm);

Backend comm_backend(const Communicator* comm);

// One step of the ring's all-reduce as it ended on this rank, for a program that shows
// the algorithm at work (allreduce_bench --show).
typedef struct {
    const char* phase;  // "reduce-scatter" or "all-gather"
    int step;           // within the phase, from 0
    int sent_chunk;     // the chunk this rank sent to the right
    int received_chunk; // the chunk it received from the left (added, or copied over)
    const float* data;  // (count) this rank's buffer after the step, in host memory
    size_t count;
} RingStep;
typedef void (*RingStepHook)(void* ctx, const RingStep* step);
// Where chunk c of the ring's count floats on world_size ranks begins: chunk c is
// [comm_ring_chunk_begin(c), comm_ring_chunk_begin(c + 1)); the first count % world_size
// chunks have one float more than the others.
size_t comm_ring_chunk_begin(size_t count, int world_size, int c);
// From now on hook(ctx, step) runs after every step of every ring all-reduce of comm
// (comm_barrier's too); NULL: none, which is the default and costs one test per step.
// With a hook, two ranks run the ring's steps for every size, where they would otherwise
// exchange a small message whole (the same sums): set it on both, or their frames differ
// and the collective fails.
void comm_set_ring_step_hook(Communicator* comm, RingStepHook hook, void* ctx);

#ifdef __cplusplus
}
#endif

#endif
