/*
 * collective.c - the ring all-reduce over sockets, and NCCL behind the same calls.
 *
 * The ring (Patarasuk and Yuan, 2009; what NCCL and gloo run): the buffer is
 * cut into world_size chunks. In a reduce-scatter of N - 1 steps every rank
 * passes a chunk to its right neighbour and adds the chunk coming from its
 * left; afterwards each rank holds the full sum of one chunk. An all-gather of
 * N - 1 more steps passes the finished chunks around the ring. Each rank sends
 * 2 (N - 1) / N of the buffer whatever N is, and since every chunk is summed
 * at one place and then copied, all ranks end with the same bits. Two ranks in
 * shared memory exchange a small buffer whole instead, in one step: each adds the
 * other's, and a + b == b + a gives the ring's bits.
 *
 * Each direction of the ring is a link: a socket, or a channel in shared memory
 * (shm.h) beside a socket that only says whether the neighbour lives. Every message
 * has the same frame either way; over a channel the reduce-scatter adds the incoming
 * floats straight into the buffer, where a socket's land in `incoming` first.
 */
#include "collective.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef HAVE_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>
#endif

#include "check.h"
#include "device.h" // device_stream
#include "net.h"
#include "timer.h"
#include "trace.h"

typedef enum { RING_SUM, RING_MEAN, RING_BROADCAST, RING_BARRIER } RingOp;

typedef struct AsyncQueue AsyncQueue;

// A collective as every rank must see it: what the caller named (CommCall), which
// operation, and how many floats. Ring frames carry it; NCCL and host collectives
// compare it in a collective of its own (check_fingerprints).
typedef struct {
    uint32_t op;                // RingOp
    int32_t epoch;              // -1 for none
    int32_t step;               // -1 for none
    uint32_t count;             // floats in the whole collective
    char what[COMM_WHAT_BYTES]; // NUL-padded
} Fingerprint;

struct Communicator {
    CommSettings s;
    Backend backend;
    // the ring
    ShmLink send;    // to rank + 1
    ShmLink recv;    // from rank - 1
    ShmRegion* shm;  // this process's mapping of the channels, if the communicator owns it
    float* host;     // (capacity) host copy of a device buffer (GPU ranks only)
    float* incoming; // (capacity / world_size + 1) the chunk arriving from the left
    size_t capacity;
    uint32_t sequence;        // ring collectives run so far: the same on every rank, or a bug
    Fingerprint current;      // the collective running now, as its caller named it
    bool fingerprints_agreed; // NCCL and host collectives: the first call's were compared
    HostCollectives host_ops; // BACKEND_HOST only
    AsyncQueue* async;        // the collectives started and not yet waited for, if any
    RingStepHook step_hook;   // called after each all-reduce step, if not NULL
    void* step_hook_ctx;
#ifdef HAVE_NCCL
    ncclComm_t nccl;
    cudaStream_t stream;  // NCCL's, apart from the compute's (device_stream())
    cudaEvent_t computed; // where the compute stream stood when a collective was queued
    float* one_float;     // (1) device memory for the barrier
#endif
};

#define NO_LINK ((ShmLink){NULL, -1})

static int mod(int a, int n) {
    return ((a % n) + n) % n;
}

// Chunk c of count elements split world_size ways: [chunk_begin(c), chunk_begin(c + 1)).
static size_t chunk_begin(size_t count, int world_size, int c) {
    return count / world_size * c +
           (count % world_size < (size_t)c ? count % world_size : (size_t)c);
}

// ----------------------------------------------------------------------------
// the ring

int comm_ring_socketpairs(int (*fds)[2], int world_size) {
    for (int i = 0; i < world_size; i++)
        SYS_CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, fds[i]));
    return 0;
}

void comm_ring_keep_own(int (*fds)[2], int world_size, int rank, int* send_fd, int* recv_fd) {
    *send_fd = fds[rank][0];
    *recv_fd = fds[(rank + world_size - 1) % world_size][1];
    for (int i = 0; i < world_size; i++)
        for (int end = 0; end < 2; end++)
            if (fds[i][end] != *send_fd && fds[i][end] != *recv_fd)
                close(fds[i][end]);
}

ShmRegion* comm_ring_shm(int world_size, size_t channel_bytes) {
    ShmRegion* shm = shm_region_create(world_size, channel_bytes);
    if (shm == NULL)
        rank_log("ring: shared memory for %d ranks (%zu bytes a channel): %s", world_size,
                 channel_bytes, strerror(errno));
    return shm;
}

int comm_init_ring_links(Communicator** comm, CommSettings s, ShmLink send, ShmLink recv) {
    Communicator* c = calloc(1, sizeof *c);
    if (c == NULL) {
        rank_log("comm_init_ring: out of memory");
        return -1;
    }
    *c = (Communicator){.s = s, .backend = BACKEND_RING, .send = send, .recv = recv};
    *comm = c;
    if (s.world_size == 1)
        return 0;
    if (s.debug)
        rank_log("ring: to rank %d over %s, from rank %d over %s", mod(s.rank + 1, s.world_size),
                 send.channel != NULL ? "shared memory" : "a socket", mod(s.rank - 1, s.world_size),
                 recv.channel != NULL ? "shared memory" : "a socket");
    // Socket buffers of a megabyte let a whole chunk of a large all-reduce sit in the
    // kernel while the neighbour is still busy (best effort: the system may cap them).
    int buffer_bytes = 1 << 20;
    if (send.channel == NULL)
        setsockopt(send.fd, SOL_SOCKET, SO_SNDBUF, &buffer_bytes, sizeof buffer_bytes);
    if (recv.channel == NULL)
        setsockopt(recv.fd, SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof buffer_bytes);
    if (net_set_nonblocking(send.fd) != 0 || net_set_nonblocking(recv.fd) != 0) {
        rank_log("comm_init_ring: %s", strerror(errno));
        return -1;
    }
    return 0;
}

int comm_init_ring(Communicator** comm, CommSettings s, int send_fd, int recv_fd) {
    return comm_init_ring_links(comm, s, (ShmLink){NULL, send_fd}, (ShmLink){NULL, recv_fd});
}

int comm_init_ring_shm(Communicator** comm, CommSettings s, ShmRegion* shm, int send_fd,
                       int recv_fd) {
    *comm = NULL;
    if (shm_region_count(shm) != s.world_size) {
        rank_log("comm_init_ring_shm: %d channels for %d ranks", shm_region_count(shm),
                 s.world_size);
        return -1;
    }
    ShmLink send = {shm_region_channel(shm, s.rank), send_fd};
    ShmLink recv = {shm_region_channel(shm, mod(s.rank - 1, s.world_size)), recv_fd};
    int err = comm_init_ring_links(comm, s, send, recv);
    if (*comm != NULL)
        (*comm)->shm = shm;
    return err;
}

#define RING_HELLO_MAGIC 0x52494e47u // "RING"

// Accepts connections on listen_fd until rank expected_rank introduces itself.
static int accept_left(int listen_fd, int expected_rank, double deadline) {
    for (;;) {
        int fd = net_accept(listen_fd, deadline);
        if (fd < 0) {
            rank_log("ring: waiting for rank %d to connect: %s", expected_rank,
                     errno == ETIMEDOUT ? "timed out" : strerror(errno));
            return -1;
        }
        uint32_t hello[2];
        double hello_deadline = timer_seconds() + 2.0; // a silent stranger must not hold us
        if (net_recv_all(fd, hello, sizeof hello,
                         hello_deadline < deadline ? hello_deadline : deadline) == NET_OK &&
            ntohl(hello[0]) == RING_HELLO_MAGIC && ntohl(hello[1]) == (uint32_t)expected_rank)
            return fd;
        char peer[64];
        net_peer_name(fd, peer, sizeof peer);
        rank_log("ring: turned away a connection from %s that is not rank %d", peer, expected_rank);
        close(fd);
    }
}

int comm_ring_connect_tcp(int listen_fd, int rank, int world_size, const char* right_addr,
                          int right_port, double timeout_s, int* send_fd, int* recv_fd) {
    *send_fd = *recv_fd = -1;
    if (world_size == 1)
        return 0;
    double deadline = timer_seconds() + timeout_s;
    char why[512];
    // Every rank's listener exists before anyone connects (the agents bound them
    // before the rendezvous), so connecting first cannot deadlock.
    *send_fd = net_connect_retry(right_addr, right_port, deadline, why, sizeof why);
    if (*send_fd < 0) {
        rank_log("ring: cannot reach rank %d: %s", (rank + 1) % world_size, why);
        return -1;
    }
    uint32_t hello[2] = {htonl(RING_HELLO_MAGIC), htonl((uint32_t)rank)};
    if (net_send_all(*send_fd, hello, sizeof hello, deadline) != NET_OK) {
        rank_log("ring: introducing this rank to rank %d failed", (rank + 1) % world_size);
        return -1;
    }
    *recv_fd = accept_left(listen_fd, (rank + world_size - 1) % world_size, deadline);
    return *recv_fd < 0 ? -1 : 0;
}

int comm_init_host(Communicator** comm, CommSettings s, HostCollectives ops) {
    Communicator* c = calloc(1, sizeof *c);
    if (c == NULL) {
        rank_log("comm_init_host: out of memory");
        return -1;
    }
    *c = (Communicator){
        .s = s, .backend = BACKEND_HOST, .send = NO_LINK, .recv = NO_LINK, .host_ops = ops};
    *comm = c;
    return 0;
}

// Grows the host buffers to hold count elements (the staging copy only if staged).
static int ring_reserve(Communicator* c, size_t count, bool staged) {
    if (count <= c->capacity && (!staged || c->host != NULL))
        return 0;
    size_t capacity = count > c->capacity ? count : c->capacity;
    float* incoming = realloc(c->incoming, (capacity / c->s.world_size + 1) * sizeof(float));
    if (incoming != NULL)
        c->incoming = incoming;
    float* host = staged ? realloc(c->host, capacity * sizeof(float)) : c->host;
    if (incoming == NULL || (staged && host == NULL)) {
        rank_log("ring: out of memory for %zu floats", count);
        return -1;
    }
    c->host = host;
    c->capacity = capacity;
    return 0;
}

// Every ring message starts with a frame, so that ranks that run different
// collectives (a missed all-reduce, a stray process on the socket) stop with a
// message naming both calls instead of adding up unrelated numbers.
typedef struct {
    uint32_t magic;     // RING_FRAME_MAGIC
    uint32_t sequence;  // which collective of this communicator
    uint32_t step;      // which step of it
    uint32_t bytes;     // the payload that follows
    Fingerprint called; // the collective, as the sender's caller named it
} RingFrame;

#define RING_FRAME_MAGIC 0x52464d32u // "RFM2": frames with the caller's fingerprint

// The fingerprint of a collective: op on count floats, for call.
static Fingerprint fingerprint_of(RingOp op, size_t count, CommCall call) {
    Fingerprint f = {.op = op, .epoch = call.epoch, .step = call.step, .count = (uint32_t)count};
    snprintf(f.what, sizeof f.what, "%s", call.what);
    return f;
}

// f in network byte order, or back: the frame carries it as the sender's bytes.
static Fingerprint fingerprint_swapped(Fingerprint f, uint32_t (*swap)(uint32_t)) {
    f.op = swap(f.op), f.count = swap(f.count);
    f.epoch = (int32_t)swap((uint32_t)f.epoch), f.step = (int32_t)swap((uint32_t)f.step);
    return f;
}

static bool same_fingerprint(const Fingerprint* a, const Fingerprint* b) {
    return a->op == b->op && a->epoch == b->epoch && a->step == b->step && a->count == b->count &&
           strncmp(a->what, b->what, sizeof a->what) == 0;
}

// "all-reduce "gradients" (epoch 3, step 12, 4481 floats)".
static void describe_fingerprint(const Fingerprint* f, char* out, size_t len) {
    static const char* const ops[] = {"all-reduce (sum)", "all-reduce (mean)", "broadcast",
                                      "barrier"};
    char where[64] = "";
    if (f->epoch >= 0)
        snprintf(where, sizeof where, "epoch %d, ", f->epoch + 1);
    if (f->step >= 0)
        snprintf(where + strlen(where), sizeof where - strlen(where), "step %d, ", f->step + 1);
    snprintf(out, len, "%s \"%.*s\" (%s%u float%s)", f->op < 4 ? ops[f->op] : "?",
             (int)sizeof f->what, f->what, where, f->count, f->count == 1 ? "" : "s");
}

// Moves the pieces over the ring's two links at once: sockets both, or through shm.c,
// which also serves one channel beside one socket. Bit 1 of add: recv[1] is added into.
static NetStatus ring_exchange(Communicator* c, const struct iovec* send, int send_count,
                               const struct iovec* recv, int recv_count, unsigned add,
                               double deadline) {
    if (c->send.channel == NULL && c->recv.channel == NULL)
        return net_exchange(c->send.fd, send, send_count, c->recv.fd, recv, recv_count, deadline);
    return shm_exchange(c->send, send, send_count, c->recv, recv, recv_count, add, deadline);
}

// Sends send_bytes of send to the right and receives recv_bytes into into from the
// left (either may be 0), each behind a frame, and checks the frame that arrives. With
// add, the incoming floats are added to those in into. Over a channel they are added as
// they arrive, before the frame is checked: as in the all-gather, which receives into
// the buffer itself, a failed check leaves the buffer undefined (and the call fails).
static int ring_transfer(Communicator* c, const char* what, int step, const void* send,
                         size_t send_bytes, void* into, size_t recv_bytes, bool add,
                         double deadline) {
    int N = c->s.world_size, r = c->s.rank;
    RingFrame out = {htonl(RING_FRAME_MAGIC), htonl(c->sequence), htonl((uint32_t)step),
                     htonl((uint32_t)send_bytes), fingerprint_swapped(c->current, htonl)};
    RingFrame in;
    bool staged = add && c->recv.channel == NULL; // a socket's floats land in incoming first
    struct iovec send_pieces[2] = {{&out, sizeof out}, {(void*)send, send_bytes}};
    struct iovec recv_pieces[2] = {{&in, sizeof in}, {staged ? c->incoming : into, recv_bytes}};
    bool sending = send != NULL, receiving = into != NULL;
    NetStatus st = ring_exchange(c, send_pieces, sending ? 2 : 0, recv_pieces, receiving ? 2 : 0,
                                 add && !staged ? 1u << 1 : 0, deadline);
    if (st != NET_OK) {
        char called[128];
        describe_fingerprint(&c->current, called, sizeof called);
        rank_log("%s step %d of %s with ranks %d (left) and %d (right): %s%s", what, step, called,
                 mod(r - 1, N), mod(r + 1, N), net_status_str(st),
                 st == NET_TIMEOUT ? " (see --timeout)" : "");
        return -1;
    }
    if (receiving && ntohl(in.magic) == RING_FRAME_MAGIC) {
        Fingerprint theirs = fingerprint_swapped(in.called, ntohl);
        if (!same_fingerprint(&theirs, &c->current)) {
            char a[128], b[128];
            describe_fingerprint(&theirs, a, sizeof a);
            describe_fingerprint(&c->current, b, sizeof b);
            rank_log("%s: rank %d is at %s, this rank at %s: the ranks are not running the same "
                     "collectives",
                     what, mod(r - 1, N), a, b);
            return -1;
        }
    }
    if (receiving && (ntohl(in.magic) != RING_FRAME_MAGIC || ntohl(in.sequence) != c->sequence ||
                      ntohl(in.step) != (uint32_t)step || ntohl(in.bytes) != recv_bytes)) {
        rank_log("%s step %d: rank %d sent collective #%u step %u (%u bytes), this rank "
                 "expected #%u step %d (%zu bytes): the ranks are not running the same "
                 "collectives",
                 what, step, mod(r - 1, N), ntohl(in.sequence), ntohl(in.step), ntohl(in.bytes),
                 c->sequence, step, recv_bytes);
        return -1;
    }
    float* own = into;
    for (size_t i = 0; staged && i < recv_bytes / sizeof(float); i++)
        own[i] += c->incoming[i];
    return 0;
}

// Sends chunk send_c of data to the right while receiving chunk recv_c from the left into
// into (adding it to what into holds, with add).
static int ring_step(Communicator* c, const char* what, int step, float* data, size_t count,
                     int send_c, int recv_c, float* into, bool add, double deadline) {
    int N = c->s.world_size, r = c->s.rank;
    size_t send_at = chunk_begin(count, N, send_c), recv_at = chunk_begin(count, N, recv_c);
    size_t send_n = chunk_begin(count, N, send_c + 1) - send_at;
    size_t recv_n = chunk_begin(count, N, recv_c + 1) - recv_at;
    if (c->s.debug)
        rank_log("%s step %d: chunk %d (%zu floats) to rank %d, chunk %d from rank %d", what, step,
                 send_c, send_n, mod(r + 1, N), recv_c, mod(r - 1, N));
    RETURN_IF_FAILED(ring_transfer(c, what, step, data + send_at, send_n * sizeof(float), into,
                                   recv_n * sizeof(float), add, deadline));
    bool scatter = step < N - 1; // the all-gather's steps are numbered on from there
    if (c->step_hook != NULL)
        c->step_hook(c->step_hook_ctx,
                     &(RingStep){scatter ? "reduce-scatter" : "all-gather",
                                 scatter ? step : step - (N - 1), send_c, recv_c, data, count});
    return 0;
}

// Two ranks in shared memory and a message of at most this many bytes: one exchange of the
// whole buffer, where the ring's two steps wait on each other (pair_allreduce_host).
#define PAIR_MAX_BYTES (32u << 10)

// Whether data (count) can take the pairwise exchange: two ranks, both links channels, and
// the message small enough to wait in a channel whole (see pair_allreduce_host). Both ranks
// must answer alike, so only what they share counts: the two channels, the count. A step
// hook asks to watch the ring, which then runs as on more ranks.
static bool pair_exchange_fits(const Communicator* c, size_t count) {
    size_t bytes = count * sizeof(float), message = sizeof(RingFrame) + bytes;
    return c->s.world_size == 2 && c->send.channel != NULL && c->recv.channel != NULL &&
           c->step_hook == NULL && bytes <= PAIR_MAX_BYTES &&
           message <= shm_channel_capacity(c->send.channel) &&
           message <= shm_channel_capacity(c->recv.channel);
}

// The all-reduce of two ranks in one exchange: each sends its whole buffer, then adds the
// other's into its own as it arrives. Both end with the ring's bits, as a + b == b + a, and
// the ring's two steps (a half each way, then the summed halves back) become one. The
// send goes first and whole, so that no float is added to before it is sent. Sending first
// cannot deadlock: the message fits in the channel, and all it may wait for is room, while
// the peer reads this rank's last message of the collective before, which needs nothing
// from this rank.
static int pair_allreduce_host(Communicator* c, float* data, size_t count, double deadline) {
    size_t bytes = count * sizeof(float);
    if (c->s.debug)
        rank_log("ring pairwise exchange: %zu floats each way with rank %d", count, 1 - c->s.rank);
    RETURN_IF_FAILED(
        ring_transfer(c, "ring pairwise exchange", 0, data, bytes, NULL, 0, false, deadline));
    return ring_transfer(c, "ring pairwise exchange", 0, NULL, 0, data, bytes, true, deadline);
}

// The all-reduce on host memory: data (count) becomes the sum over the ranks.
static int ring_allreduce_host(Communicator* c, float* data, size_t count) {
    int N = c->s.world_size, r = c->s.rank;
    double deadline = timer_seconds() + c->s.timeout_s;
    if (pair_exchange_fits(c, count))
        return pair_allreduce_host(c, data, count, deadline);
    // Step 1) reduce-scatter: in step s rank r sends chunk r - s and adds chunk r - s - 1
    // (own[i] += incoming[i], in ring_transfer).
    for (int s = 0; s < N - 1; s++) {
        int recv_c = mod(r - s - 1, N);
        RETURN_IF_FAILED(ring_step(c, "ring reduce-scatter", s, data, count, mod(r - s, N), recv_c,
                                   data + chunk_begin(count, N, recv_c), true, deadline));
    }
    // Step 2) all-gather: rank r now holds the sum of chunk r + 1; pass the sums on.
    for (int s = 0; s < N - 1; s++) {
        int recv_c = mod(r - s, N);
        RETURN_IF_FAILED(ring_step(c, "ring all-gather", N - 1 + s, data, count, mod(r + 1 - s, N),
                                   recv_c, data + chunk_begin(count, N, recv_c), false, deadline));
    }
    return 0;
}

size_t comm_ring_chunk_begin(size_t count, int world_size, int c) {
    return chunk_begin(count, world_size, c);
}

void comm_set_ring_step_hook(Communicator* c, RingStepHook hook, void* ctx) {
    c->step_hook = hook;
    c->step_hook_ctx = ctx;
}

// The root's buffer travels once around the ring, each rank forwarding it to the next.
static int ring_broadcast_host(Communicator* c, float* data, size_t count, int root) {
    int N = c->s.world_size, r = c->s.rank;
    double deadline = timer_seconds() + c->s.timeout_s;
    size_t bytes = count * sizeof(float);
    if (c->s.debug)
        rank_log("ring broadcast of %zu floats from rank %d: %s rank %d%s", count, root,
                 r == root ? "send to" : "receive from", r == root ? mod(r + 1, N) : mod(r - 1, N),
                 r != root && mod(r + 1, N) != root ? ", then pass on" : "");
    if (r != root)
        RETURN_IF_FAILED(
            ring_transfer(c, "ring broadcast", 0, NULL, 0, data, bytes, false, deadline));
    if (mod(r + 1, N) != root)
        RETURN_IF_FAILED(
            ring_transfer(c, "ring broadcast", 0, data, bytes, NULL, 0, false, deadline));
    return 0;
}

// data[i] /= n, as DistributedDataParallel divides the summed gradients. Where n is a power
// of two, 1 / n is exact and x * (1 / n) is x / n to the bit (both round the same real
// number): a multiply, a few times cheaper than a divide (about 1 us of the 2-rank step).
static void divide_floats(float* data, size_t count, int n) {
    if ((n & (n - 1)) == 0) {
        float inverse = 1.0f / (float)n;
        for (size_t i = 0; i < count; i++)
            data[i] *= inverse;
        return;
    }
    for (size_t i = 0; i < count; i++)
        data[i] /= (float)n;
}

// Runs op on host memory (the ring's, or the program's host collectives): buf itself on
// the CPU, a staged copy of a GPU buffer.
static int ring_run(Communicator* c, RingOp op, float* buf, size_t count, int root) {
    if (c->s.world_size == 1 || count == 0)
        return 0;
    c->sequence++;
    bool staged = c->s.k != &kernels_cpu;
    RETURN_IF_FAILED(ring_reserve(c, count, staged));
    float* data = staged ? c->host : buf;
    if (staged)
        RETURN_IF_FAILED(c->s.k->download(data, buf, count * sizeof(float)));
    const HostCollectives* h = &c->host_ops;
    if (c->backend == BACKEND_HOST)
        RETURN_IF_FAILED(op == RING_BROADCAST ? h->broadcast(h->ctx, data, count, root)
                                              : h->allreduce_sum(h->ctx, data, count));
    else if (op == RING_BROADCAST)
        RETURN_IF_FAILED(ring_broadcast_host(c, data, count, root));
    else
        RETURN_IF_FAILED(ring_allreduce_host(c, data, count));
    if (op == RING_MEAN)
        divide_floats(data, count, c->s.world_size);
    return staged ? c->s.k->upload(buf, data, count * sizeof(float)) : 0;
}

// ----------------------------------------------------------------------------
// NCCL

#ifdef HAVE_NCCL
// A wait on NCCL spins (sched_yield) this long before its first sleep: an all-reduce of the
// model's gradients within a node should take microseconds, less than a sleep's timer
// slack (50 us on Linux).
#define NCCL_SPIN_S 50e-6
// Then it sleeps half its length so far, up to this: init and a stuck peer take much longer.
#define NCCL_PAUSE_MAX_US 1000

// One pause of a wait that has lasted waited_s (timer_backoff_us).
static void nccl_pause(double waited_s) {
    unsigned us = timer_backoff_us(waited_s, NCCL_SPIN_S, NCCL_PAUSE_MAX_US);
    if (us == 0)
        sched_yield();
    else
        usleep(us);
}

// Waits until the communicator's pending work is done: NCCL's state leaves
// ncclInProgress and, for a collective, the stream drains. Past the deadline
// the communicator is aborted, which also frees any rank blocked with us.
static int nccl_wait(Communicator* c, const char* what, double deadline, bool on_stream) {
    double started = timer_seconds();
    for (;;) {
        ncclResult_t state;
        ncclResult_t res = ncclCommGetAsyncError(c->nccl, &state);
        if (res != ncclSuccess || (state != ncclSuccess && state != ncclInProgress)) {
            rank_log("%s: %s", what, ncclGetErrorString(res != ncclSuccess ? res : state));
            return -1;
        }
        cudaError_t stream_state = on_stream ? cudaStreamQuery(c->stream) : cudaSuccess;
        if (state == ncclSuccess && stream_state == cudaSuccess)
            return 0;
        if (stream_state != cudaSuccess && stream_state != cudaErrorNotReady) {
            rank_log("%s: %s", what, cudaGetErrorString(stream_state));
            return -1;
        }
        if (timer_seconds() > deadline) {
            rank_log("%s: timed out after %.0f s (see --timeout); aborting NCCL", what,
                     c->s.timeout_s);
            ncclCommAbort(c->nccl);
            c->nccl = NULL;
            return -1;
        }
        nccl_pause(timer_seconds() - started);
    }
}

// Ends the NCCL side of c. A clean end finalizes first, within the deadline: destroying
// without it would wait, unbounded, for every rank to get there. Any failure aborts.
// A communicator of another backend has no NCCL side and must not touch CUDA at all: even
// cudaFree(NULL) would create a GPU context in a CPU-only rank.
static void nccl_close(Communicator* c, bool abort) {
    if (c->backend != BACKEND_NCCL)
        return;
    if (c->nccl != NULL && !abort) {
        ncclResult_t res = ncclCommFinalize(c->nccl);
        abort = (res != ncclSuccess && res != ncclInProgress) ||
                nccl_wait(c, "ncclCommFinalize", timer_seconds() + c->s.timeout_s, false) != 0;
    }
    if (c->nccl != NULL) // (nccl_wait aborts and forgets it past the deadline)
        (abort ? ncclCommAbort : ncclCommDestroy)(c->nccl);
    if (c->stream != NULL)
        cudaStreamDestroy(c->stream);
    if (c->computed != NULL)
        cudaEventDestroy(c->computed);
    cudaFree(c->one_float);
}

static int nccl_unique_id(void* unique_id) {
    ncclUniqueId id;
    NCCL_CHECK(ncclGetUniqueId(&id));
    memcpy(unique_id, &id, sizeof id);
    return 0;
}

// The communicator of rank s.rank once the unique id is known.
static int nccl_init(Communicator** comm, CommSettings s, const void* unique_id) {
    Communicator* c = calloc(1, sizeof *c);
    if (c == NULL) {
        rank_log("comm_init_nccl: out of memory");
        return -1;
    }
    *c = (Communicator){.s = s, .backend = BACKEND_NCCL, .send = NO_LINK, .recv = NO_LINK};
    *comm = c;
    ncclUniqueId id;
    memcpy(&id, unique_id, sizeof id);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0; // return at once; nccl_wait bounds the wait
    // A stream that does not wait for the compute (nor the compute for it), so that a bucket's
    // all-reduce runs beside the rest of the backward pass; nccl_queue orders the two.
    if (cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreateWithFlags(&c->computed, cudaEventDisableTiming) != cudaSuccess ||
        cudaMalloc((void**)&c->one_float, sizeof(float)) != cudaSuccess ||
        cudaMemset(c->one_float, 0, sizeof(float)) != cudaSuccess) {
        rank_log("comm_init_nccl: %s", cudaGetErrorString(cudaGetLastError()));
        return -1;
    }
    ncclResult_t res = ncclCommInitRankConfig(&c->nccl, s.world_size, id, s.rank, &config);
    if (res != ncclSuccess && res != ncclInProgress) {
        rank_log("ncclCommInitRankConfig: %s", ncclGetErrorString(res));
        return -1;
    }
    return nccl_wait(c, "ncclCommInitRankConfig", timer_seconds() + s.timeout_s, false);
}

const char* comm_nccl_version(void) {
    static char version[32];
    int code = 0;
    ncclGetVersion(&code);
    snprintf(version, sizeof version, "%d.%d.%d", code / 10000, code / 100 % 100, code % 100);
    return version;
}

// Has NCCL's stream wait for the work queued so far on the compute stream (the producer of
// the collective's buffer).
static int nccl_follow_compute(Communicator* c, const char* what) {
    if (cudaEventRecord(c->computed, device_stream()) != cudaSuccess ||
        cudaStreamWaitEvent(c->stream, c->computed, 0) != cudaSuccess) {
        rank_log("%s: %s", what, cudaGetErrorString(cudaGetLastError()));
        return -1;
    }
    return 0;
}

// Waits for a collective's queueing (NCCL may answer ncclInProgress when non-blocking)
// and, with on_stream, for the collective itself.
static int nccl_finish(Communicator* c, const char* what, ncclResult_t queued, bool on_stream) {
    if (queued != ncclSuccess && queued != ncclInProgress) {
        rank_log("%s: %s", what, ncclGetErrorString(queued));
        return -1;
    }
    return nccl_wait(c, what, timer_seconds() + c->s.timeout_s, on_stream);
}

// wait: return once the all-reduce is done (else once it is queued: comm_wait_all waits).
static int nccl_allreduce(Communicator* c, float* buf, size_t count, ncclRedOp_t op, bool wait) {
    if (c->s.debug)
        rank_log("ncclAllReduce of %zu floats%s", count, wait ? "" : ", started");
    RETURN_IF_FAILED(nccl_follow_compute(c, "ncclAllReduce"));
    if (!wait) // started: it runs on NCCL's stream while the host goes on (a bucket)
        trace_stream_begin(c->stream);
    ncclResult_t queued = ncclAllReduce(buf, buf, count, ncclFloat, op, c->nccl, c->stream);
    int err = nccl_finish(c, "ncclAllReduce", queued, wait);
    // The span's end goes on the stream after NCCL has queued its work there: a non-blocking
    // communicator may still be queueing when ncclAllReduce returns (ncclInProgress).
    if (!wait)
        trace_stream_end(TRACE_BUCKET, c->current.what, count * sizeof(float), c->current.epoch,
                         c->current.step, c->stream);
    return err;
}

static int nccl_broadcast(Communicator* c, float* buf, size_t count, int root) {
    if (c->s.debug)
        rank_log("ncclBroadcast of %zu floats from rank %d", count, root);
    RETURN_IF_FAILED(nccl_follow_compute(c, "ncclBroadcast"));
    return nccl_finish(c, "ncclBroadcast",
                       ncclBroadcast(buf, buf, count, ncclFloat, root, c->nccl, c->stream), true);
}
#else
static int nccl_unique_id(void* unique_id) {
    (void)unique_id;
    rank_log("NCCL: this build has no NCCL (it was not found at build time)");
    return -1;
}

static int nccl_init(Communicator** comm, CommSettings s, const void* unique_id) {
    (void)s;
    *comm = NULL;
    return nccl_unique_id((void*)unique_id);
}

const char* comm_nccl_version(void) {
    return "none";
}
#endif

// Rank 0's unique id around the ring: each rank receives it from the left and passes it
// to the right, all but the last; then the ring's sockets have served.
static int share_id_by_ring(void* id, int rank, int world_size, int send_fd, int recv_fd,
                            double deadline) {
    NetStatus st = NET_OK;
    if (net_set_nonblocking(send_fd) != 0 || net_set_nonblocking(recv_fd) != 0)
        st = NET_ERROR;
    else if (rank != 0)
        st = net_recv_all(recv_fd, id, COMM_NCCL_ID_BYTES, deadline);
    if (st == NET_OK && rank + 1 < world_size)
        st = net_send_all(send_fd, id, COMM_NCCL_ID_BYTES, deadline);
    if (st != NET_OK)
        rank_log("passing on NCCL's unique id: %s", net_status_str(st));
    close(send_fd);
    close(recv_fd);
    return st == NET_OK ? 0 : -1;
}

// Rank 0 hands the id to the relay; every other rank gets it from there.
static int share_id_by_relay(void* id, int rank, int relay_fd, double deadline) {
    NetStatus st = rank == 0 ? net_send_all(relay_fd, id, COMM_NCCL_ID_BYTES, deadline)
                             : net_recv_all(relay_fd, id, COMM_NCCL_ID_BYTES, deadline);
    if (st != NET_OK)
        rank_log("NCCL's unique id %s the agent: %s", rank == 0 ? "could not reach" : "from",
                 net_status_str(st));
    return st == NET_OK ? 0 : -1;
}

int comm_init_nccl(Communicator** comm, CommSettings s, const NcclIdRoute* route) {
    unsigned char id[COMM_NCCL_ID_BYTES] = {0};
    double deadline = timer_seconds() + s.timeout_s;
    *comm = NULL;
    if (s.rank == 0 && nccl_unique_id(id) != 0) {
        if (route->transport == NCCL_ID_BY_RING)
            close(route->send_fd), close(route->recv_fd);
        return -1;
    }
    int shared = -1;
    switch (route->transport) {
    case NCCL_ID_BY_RING:
        shared =
            share_id_by_ring(id, s.rank, s.world_size, route->send_fd, route->recv_fd, deadline);
        break;
    case NCCL_ID_BY_RELAY:
        shared = share_id_by_relay(id, s.rank, route->relay_fd, deadline);
        break;
    case NCCL_ID_BY_BROADCAST:
        shared = route->broadcast(id, sizeof id, 0);
        break;
    }
    return shared == 0 ? nccl_init(comm, s, id) : -1;
}

// ----------------------------------------------------------------------------
// the interface

int comm_choose_backend(const char* request, int gpus, int ranks, Backend* backend, char* why,
                        size_t why_len) {
    bool have_nccl = strcmp(comm_nccl_version(), "none") != 0, gpu_each = gpus >= ranks;
    if (strcmp(request, "nccl") == 0 && (!have_nccl || !gpu_each)) {
        snprintf(why, why_len,
                 "--backend nccl needs NCCL and one GPU per rank: %d rank%s, %d GPU%s, NCCL %s "
                 "(use --backend ring to share GPUs or run on the CPU)",
                 ranks, ranks > 1 ? "s" : "", gpus, gpus == 1 ? "" : "s", comm_nccl_version());
        return -1;
    }
    *backend = strcmp(request, "ring") != 0 && have_nccl && gpu_each ? BACKEND_NCCL : BACKEND_RING;
    return 0;
}

// A sum over the ranks of n floats in host memory, by the engine itself and without a
// fingerprint of its own: the one collective that compares the fingerprints.
static int raw_sum(Communicator* c, float* host, size_t n) {
    if (c->backend == BACKEND_HOST)
        return c->host_ops.allreduce_sum(c->host_ops.ctx, host, n);
#ifdef HAVE_NCCL
    float* device = c->s.k->alloc(n * sizeof(float));
    int err = device == NULL || c->s.k->upload(device, host, n * sizeof(float)) ||
              nccl_allreduce(c, device, n, ncclSum, true) ||
              c->s.k->download(host, device, n * sizeof(float));
    if (device != NULL)
        c->s.k->release(device);
    return err ? -1 : 0;
#else
    return -1; // the ring checks its frames instead
#endif
}

#define FINGERPRINT_WORDS (sizeof(Fingerprint) / sizeof(uint32_t))

// NCCL's and a host engine's frames are not ours: every rank's fingerprint travels in a
// small sum instead (each rank fills its own slots with 16-bit pieces, exact in floats),
// and every rank compares them all, so that all fail together when one differs.
static int check_fingerprints(Communicator* c) {
    size_t per_rank = 2 * FINGERPRINT_WORDS, n = (size_t)c->s.world_size * per_rank;
    float* slots = calloc(n, sizeof(float));
    uint32_t words[FINGERPRINT_WORDS];
    memcpy(words, &c->current, sizeof words);
    for (size_t w = 0; slots != NULL && w < FINGERPRINT_WORDS; w++) {
        slots[(size_t)c->s.rank * per_rank + 2 * w] = (float)(words[w] & 0xffff);
        slots[(size_t)c->s.rank * per_rank + 2 * w + 1] = (float)(words[w] >> 16);
    }
    int err = slots == NULL || raw_sum(c, slots, n) != 0;
    for (int r = 0; !err && r < c->s.world_size; r++) {
        for (size_t w = 0; w < FINGERPRINT_WORDS; w++)
            words[w] = (uint32_t)slots[r * per_rank + 2 * w] |
                       (uint32_t)slots[r * per_rank + 2 * w + 1] << 16;
        Fingerprint theirs;
        memcpy(&theirs, words, sizeof theirs);
        if (!same_fingerprint(&theirs, &c->current)) {
            char a[128], b[128];
            describe_fingerprint(&theirs, a, sizeof a);
            describe_fingerprint(&c->current, b, sizeof b);
            rank_log("rank %d is at %s, this rank at %s: the ranks are not running the same "
                     "collectives",
                     r, a, b);
            err = 1;
        }
    }
    free(slots);
    return err ? -1 : 0;
}

// Records a collective's fingerprint and, for NCCL and host collectives, has the ranks
// compare theirs at the first call and, under --debug, at every call.
static int note_collective(Communicator* c, RingOp op, size_t count, CommCall call) {
    c->current = fingerprint_of(op, count, call);
    if (c->backend == BACKEND_RING || c->s.world_size == 1 ||
        (c->fingerprints_agreed && !c->s.debug))
        return 0;
    c->fingerprints_agreed = true;
    return check_fingerprints(c);
}

// Starts a collective, after the ones started before it (comm_allreduce_mean_start).
static int begin_collective(Communicator* c, RingOp op, size_t count, CommCall call) {
    RETURN_IF_FAILED(comm_wait_all(c));
    return note_collective(c, op, count, call);
}

// ----------------------------------------------------------------------------
// collectives that overlap the caller's work (lesson 04's gradient buckets)

#define ASYNC_MAX_PENDING 64

// A collective started and not yet run, as its caller described it.
typedef struct {
    Fingerprint called;
    float* buf;
    size_t count;
} AsyncOp;

// The ring's collectives run on a thread of their own, one after the other in the order
// they were started, while the caller computes; NCCL's run on its stream instead. One op
// runs at a time, on whichever thread takes it: the communication thread, or the caller
// in comm_wait_all, which runs the ops still waiting itself rather than sleep until a
// thread that may have no free core gets to them. The caller touches the communicator
// itself again only after comm_wait_all, so two threads never use the ring at once.
struct AsyncQueue {
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t lock;
    pthread_cond_t changed;         // an op was queued, one finished, or stop was asked
    AsyncOp ops[ASYNC_MAX_PENDING]; // [taken, queued) wait, oldest first (mod the size)
    unsigned queued, taken, done;   // ops started, taken to run, and finished (count up)
    unsigned waited;                // queued at the last comm_wait_all (the caller's own)
    bool failed;                    // an op failed: the rest are skipped, wait_all says -1
    bool stop;                      // comm_close: the thread ends
    double busy_seconds;            // time spent in the ops so far
};

// Whether an op waits and none runs: the next one may be taken.
static bool async_takeable(const AsyncQueue* q) {
    return q->taken != q->queued && q->taken == q->done;
}

// Takes the next op and runs it to its end (every ring call has its own deadline).
// Called, and returns, with the lock held.
static void async_run_next(Communicator* c, AsyncQueue* q) {
    AsyncOp op = q->ops[q->taken++ % ASYNC_MAX_PENDING];
    bool skip = q->failed;
    pthread_mutex_unlock(&q->lock);
    double start = timer_seconds();
    c->current = op.called;
    trace_begin_call(TRACE_BUCKET, op.called.what, op.count * sizeof(float), op.called.epoch,
                     op.called.step);
    int err = trace_end(skip ? -1 : ring_run(c, (RingOp)op.called.op, op.buf, op.count, 0));
    pthread_mutex_lock(&q->lock);
    q->busy_seconds += timer_seconds() - start;
    q->failed = q->failed || err != 0;
    q->done++;
    pthread_cond_broadcast(&q->changed);
}

// Until at most `allowed` ops are started and not finished: runs the next one here
// whenever none runs, else waits. Called, and returns, with the lock held.
static void async_drain_to(Communicator* c, AsyncQueue* q, unsigned allowed) {
    while (q->queued - q->done > allowed) {
        if (async_takeable(q))
            async_run_next(c, q);
        else
            pthread_cond_wait(&q->changed, &q->lock);
    }
}

// The communication thread: runs the ops as they come, until told to stop.
static void* async_thread(void* arg) {
    Communicator* c = arg;
    AsyncQueue* q = c->async;
    trace_thread_is_comm();
    pthread_mutex_lock(&q->lock);
    while (!q->stop) {
        if (async_takeable(q))
            async_run_next(c, q);
        else
            pthread_cond_wait(&q->changed, &q->lock);
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

// The queue (and, for the ring, its thread) at the first start.
static int async_ready(Communicator* c) {
    if (c->async != NULL)
        return 0;
    c->async = calloc(1, sizeof *c->async);
    if (c->async == NULL) {
        rank_log("comm: out of memory for the collectives' queue");
        return -1;
    }
    pthread_mutex_init(&c->async->lock, NULL);
    pthread_cond_init(&c->async->changed, NULL);
    if (c->backend != BACKEND_RING)
        return 0;
    int err = pthread_create(&c->async->thread, NULL, async_thread, c);
    if (err != 0) {
        rank_log("comm: cannot start the communication thread: %s", strerror(err));
        return -1;
    }
    c->async->thread_started = true;
    return 0;
}

int comm_allreduce_mean_start(Communicator* c, float* buf, size_t count, CommCall call) {
    if (c->s.world_size == 1)
        return 0; // the mean of one rank's gradients: nothing to wait for, no thread to wake
    RETURN_IF_FAILED(async_ready(c));
    AsyncQueue* q = c->async;
#ifdef HAVE_NCCL
    if (c->backend == BACKEND_NCCL) { // queued on NCCL's stream; only the queueing waits
        RETURN_IF_FAILED(note_collective(c, RING_MEAN, count, call));
        q->queued++;
        return nccl_allreduce(c, buf, count, ncclAvg, false);
    }
#endif
    if (c->backend != BACKEND_RING) {
        rank_log("comm: collectives that overlap are the ring's and NCCL's only");
        return -1;
    }
    pthread_mutex_lock(&q->lock);
    async_drain_to(c, q, ASYNC_MAX_PENDING - 1); // room for one more
    q->ops[q->queued % ASYNC_MAX_PENDING] =
        (AsyncOp){fingerprint_of(RING_MEAN, count, call), buf, count};
    q->queued++;
    pthread_cond_broadcast(&q->changed);
    pthread_mutex_unlock(&q->lock);
    return 0;
}

// comm_wait_all, untraced.
static int wait_all(Communicator* c) {
    AsyncQueue* q = c->async;
    if (q == NULL)
        return 0;
#ifdef HAVE_NCCL
    if (c->backend == BACKEND_NCCL) {
        int err = q->queued > q->done &&
                  nccl_wait(c, "ncclAllReduce", timer_seconds() + c->s.timeout_s, true) != 0;
        q->done = q->queued;
        return err ? -1 : 0;
    }
#endif
    // Every ring call ends by its deadline, so this wait is bounded by theirs.
    pthread_mutex_lock(&q->lock);
    async_drain_to(c, q, 0);
    bool failed = q->failed;
    pthread_mutex_unlock(&q->lock);
    return failed ? -1 : 0;
}

int comm_wait_all(Communicator* c) {
    if (c->async == NULL || c->async->waited == c->async->queued)
        return wait_all(c); // nothing started since: no span (the failures still count)
    c->async->waited = c->async->queued;
    trace_begin_named(TRACE_ALLREDUCE, "wait for buckets");
    return trace_end(wait_all(c));
}

double comm_async_seconds(const Communicator* c) {
    if (c->backend == BACKEND_NCCL)
        return -1.0; // they run on the GPU, out of the host's sight
    return c->async != NULL ? c->async->busy_seconds : 0.0;
}

// Ends the thread: after the ops started (a clean end), or at once (an abort shuts the
// sockets down, so that an op blocked on a dead peer returns now, not at its deadline).
static void async_stop(Communicator* c, bool abort) {
    AsyncQueue* q = c->async;
    if (q == NULL)
        return;
    if (!abort)
        comm_wait_all(c);
    else {
        pthread_mutex_lock(&q->lock);
        q->failed = true; // nothing more is sent
        pthread_mutex_unlock(&q->lock);
        shutdown(c->send.fd, SHUT_RDWR);
        shutdown(c->recv.fd, SHUT_RDWR);
    }
    pthread_mutex_lock(&q->lock);
    q->stop = true;
    pthread_cond_broadcast(&q->changed);
    pthread_mutex_unlock(&q->lock);
    if (q->thread_started)
        pthread_join(q->thread, NULL);
    pthread_cond_destroy(&q->changed);
    pthread_mutex_destroy(&q->lock);
    free(q);
    c->async = NULL;
}

int comm_choose_transport(const char* request, Backend backend, bool* shm, char* why,
                          size_t why_len) {
    if (backend != BACKEND_RING && strcmp(request, "auto") != 0) {
        snprintf(why, why_len, "--transport %s is the ring's; --backend %s moves its own bytes",
                 request, backend == BACKEND_NCCL ? "nccl" : "mpi");
        return -1;
    }
    *shm = backend == BACKEND_RING && strcmp(request, "socket") != 0;
    return 0;
}

// A collective on buf, after the ones started before it, by the communicator's engine.
static int run_collective(Communicator* c, RingOp op, float* buf, size_t count, int root,
                          CommCall call) {
    RETURN_IF_FAILED(begin_collective(c, op, count, call));
#ifdef HAVE_NCCL
    if (c->backend == BACKEND_NCCL)
        return op == RING_BROADCAST
                   ? nccl_broadcast(c, buf, count, root)
                   : nccl_allreduce(c, buf, count, op == RING_SUM ? ncclSum : ncclAvg, true);
#endif
    return ring_run(c, op, buf, count, root);
}

int comm_allreduce_sum(Communicator* c, float* buf, size_t count, CommCall call) {
    trace_begin_call(TRACE_ALLREDUCE, call.what, count * sizeof(float), call.epoch, call.step);
    return trace_end(run_collective(c, RING_SUM, buf, count, 0, call));
}

int comm_allreduce_mean(Communicator* c, float* buf, size_t count, CommCall call) {
    trace_begin_call(TRACE_ALLREDUCE, call.what, count * sizeof(float), call.epoch, call.step);
    return trace_end(run_collective(c, RING_MEAN, buf, count, 0, call));
}

int comm_broadcast(Communicator* c, float* buf, size_t count, int root, CommCall call) {
    trace_begin_call(TRACE_COLLECTIVE, call.what, count * sizeof(float), call.epoch, call.step);
    return trace_end(run_collective(c, RING_BROADCAST, buf, count, root, call));
}

// Nobody leaves an all-reduce before everyone has arrived.
static int barrier(Communicator* c) {
    RETURN_IF_FAILED(begin_collective(c, RING_BARRIER, 1, COMM_ONCE("barrier")));
#ifdef HAVE_NCCL
    if (c->backend == BACKEND_NCCL)
        return nccl_allreduce(c, c->one_float, 1, ncclSum, true);
#endif
    if (c->backend == BACKEND_HOST)
        return c->host_ops.barrier(c->host_ops.ctx);
    float token = 0.0f; // in host memory, whatever the device
    if (c->s.world_size == 1)
        return 0;
    RETURN_IF_FAILED(ring_reserve(c, 1, false));
    c->sequence++;
    return ring_allreduce_host(c, &token, 1);
}

int comm_barrier(Communicator* c) {
    trace_begin_named(TRACE_COLLECTIVE, "barrier");
    return trace_end(barrier(c));
}

// A 64-bit number as four 16-bit pieces: integers below 2^24 are exact in a float, and a
// sum with zeros leaves them unchanged, so an all-reduce can carry them.
#define U64_PIECES 4

// comm_allgather_floats, untraced.
static int allgather_floats(Communicator* c, const char* what, const float* mine, size_t n,
                            float* all) {
    const Kernels* k = c->s.k;
    size_t count = (size_t)c->s.world_size * n;
    // Step 1) each rank writes its own row; the others stay 0.
    memset(all, 0, count * sizeof(float));
    memcpy(all + (size_t)c->s.rank * n, mine, n * sizeof(float));
    // Step 2) the sum over ranks fills every row on every rank.
    float* device = k->alloc(count * sizeof(float));
    int err = device == NULL || k->upload(device, all, count * sizeof(float)) ||
              comm_allreduce_sum(c, device, count, COMM_ONCE(what)) ||
              k->download(all, device, count * sizeof(float));
    if (device != NULL)
        k->release(device);
    if (err)
        rank_log("all-gather of the %s failed", what);
    return err ? -1 : 0;
}

int comm_allgather_floats(Communicator* c, const char* what, const float* mine, size_t n,
                          float* all) {
    trace_begin_named(TRACE_COLLECTIVE, what); // its all-reduce is no training step's
    return trace_end(allgather_floats(c, what, mine, n, all));
}

int comm_allgather_u64(Communicator* c, const char* what, uint64_t mine, uint64_t* all) {
    float pieces[U64_PIECES];
    for (int p = 0; p < U64_PIECES; p++)
        pieces[p] = (float)((mine >> (16 * p)) & 0xffff);
    float* rows = malloc((size_t)c->s.world_size * U64_PIECES * sizeof(float));
    int err = rows == NULL || comm_allgather_floats(c, what, pieces, U64_PIECES, rows) != 0;
    for (int r = 0; !err && r < c->s.world_size; r++) {
        all[r] = 0;
        for (int p = 0; p < U64_PIECES; p++)
            all[r] |= (uint64_t)rows[r * U64_PIECES + p] << (16 * p);
    }
    free(rows);
    return err ? -1 : 0;
}

Backend comm_backend(const Communicator* c) {
    return c->backend;
}

static void comm_close(Communicator* c, bool abort) {
    if (c == NULL)
        return;
    async_stop(c, abort);
#ifdef HAVE_NCCL
    nccl_close(c, abort);
#else
    (void)abort;
#endif
    if (c->send.fd >= 0)
        close(c->send.fd);
    if (c->recv.fd >= 0 && c->recv.fd != c->send.fd)
        close(c->recv.fd);
    shm_region_unmap(c->shm);
    free(c->host);
    free(c->incoming);
    free(c);
}

void comm_abort(Communicator* c) {
    comm_close(c, true);
}
void comm_destroy(Communicator* c) {
    comm_close(c, false);
}
