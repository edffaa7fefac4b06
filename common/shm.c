/*
 * shm.c - byte channels in shared memory (see shm.h).
 *
 * A channel is a ring buffer of capacity bytes (a power of two) and two counters:
 * head, the bytes the producer ever wrote, and tail, the bytes the consumer ever read,
 * both mod 2^32. head - tail bytes wait in the ring; capacity - (head - tail) are free.
 * Each counter has one writer, so no compare-and-swap anywhere: the producer copies
 * bytes in and then publishes head with a release store; the consumer loads head with
 * acquire before it reads those bytes, and publishes tail with release once it has
 * read them, which the producer loads with acquire before it overwrites them.
 *
 * The counters are also the futex words the two sides sleep on (a futex is 32 bits,
 * hence 32-bit counters; capacities stay below 2^31 so the differences are exact). A
 * side about to sleep raises its "sleeps" flag first, and the other side issues
 * FUTEX_WAKE only when it sees the flag, so a busy pair makes no system calls at all.
 */
#include "shm.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "timer.h"

// Waiting: spin for a few looks (a peer that is running answers within a microsecond or
// two), then yield the core, then nap on the futex, each nap bounded so that the
// deadline and the peers' sockets are looked at every few milliseconds. The spin stays
// short: with more ranks than cores the peer we wait for may be waiting for our core,
// and at 4 ranks on 2 cores a 20 us spin made a 17.9 KB all-reduce six times slower.
#define SHM_SPIN_LOOKS 16
#define SHM_YIELD_SECONDS 100e-6
#define SHM_NAP_SECONDS 2e-3
// A nap in poll() when sockets take part: a channel's peer cannot wake it.
#define SHM_SOCKET_NAP_MS 1
// The most bytes a side moves before it publishes them: the consumer starts copying
// out while the producer still copies in.
#define SHM_SLICE_BYTES (64u << 10)

// ----------------------------------------------------------------------------
// the mapping: a header page, then per channel a page of counters and its ring
//
//   | ShmRegion | ch 0 counters | ch 0 ring (capacity) | ch 1 counters | ch 1 ring | ...
//     4 KiB       4 KiB           rounded up to pages
//
// head, tail and the sleep flags sit 128 bytes apart, so that the producer's writes
// and the consumer's never share a cache line (nor the line pairs that prefetch).

#define SHM_LINE 128          // the adjacent-line prefetcher moves 64-byte lines in pairs
#define SHM_PAGE 4096         // the region's header and each channel's counters
#define SHM_MAGIC 0x53484d31u // "SHM1"

struct ShmChannel {
    // Written by the producer only; the consumer sleeps on it.
    alignas(SHM_LINE) _Atomic uint32_t head;
    // Written by the consumer only; the producer sleeps on it.
    alignas(SHM_LINE) _Atomic uint32_t tail;
    // Raised by a side before it sleeps, looked at by the other after each step: rarely
    // written, so this line stays in both caches.
    alignas(SHM_LINE) _Atomic uint32_t consumer_sleeps;
    _Atomic uint32_t producer_sleeps;
    // Fixed at creation.
    alignas(SHM_LINE) uint32_t capacity;
    uint32_t magic;
};
_Static_assert(sizeof(struct ShmChannel) <= SHM_PAGE, "a channel's counters fit in a page");

struct ShmRegion {
    uint32_t magic;
    int count;
    size_t stride; // from one channel to the next: its counters' page and its ring
    size_t bytes;  // the whole mapping
};

ShmRegion* shm_region_create(int count, size_t channel_bytes) {
    if (channel_bytes == 0)
        channel_bytes = SHM_DEFAULT_CHANNEL_BYTES;
    if (count < 1 || count > 65536 || channel_bytes < SHM_MIN_CHANNEL_BYTES ||
        channel_bytes > SHM_MAX_CHANNEL_BYTES || (channel_bytes & (channel_bytes - 1)) != 0) {
        errno = EINVAL;
        return NULL;
    }
    size_t stride = SHM_PAGE + (channel_bytes + SHM_PAGE - 1) / SHM_PAGE * SHM_PAGE;
    size_t bytes = SHM_PAGE + (size_t)count * stride;
    // Fresh anonymous memory reads as zeros: every counter and flag starts at 0.
    void* p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    ShmRegion* r = p;
    *r = (ShmRegion){.magic = SHM_MAGIC, .count = count, .stride = stride, .bytes = bytes};
    for (int i = 0; i < count; i++) {
        ShmChannel* ch = shm_region_channel(r, i);
        ch->capacity = (uint32_t)channel_bytes;
        ch->magic = SHM_MAGIC;
    }
    return r;
}

ShmChannel* shm_region_channel(ShmRegion* r, int i) {
    return (ShmChannel*)((char*)r + SHM_PAGE + (size_t)i * r->stride);
}

int shm_region_count(const ShmRegion* r) {
    return r->count;
}

void shm_region_unmap(ShmRegion* r) {
    if (r != NULL)
        munmap(r, r->bytes);
}

size_t shm_channel_capacity(const ShmChannel* ch) {
    return ch->capacity;
}

static unsigned char* ring_of(const ShmChannel* ch) {
    return (unsigned char*)ch + SHM_PAGE;
}

// ----------------------------------------------------------------------------
// copying between a ring and the pieces of a message

typedef enum { INTO_RING, OUT_OF_RING, ADDED_FROM_RING } Copy;

// dst[k] += src[k] for n floats at any alignment (memcpy compiles to plain loads). The
// same addition, in the same order, as the ring's own[i] += incoming[i].
static void add_floats(unsigned char* dst, const unsigned char* src, size_t n) {
    for (size_t k = 0; k < n; k++) {
        float a, b;
        memcpy(&a, dst + 4 * k, sizeof a);
        memcpy(&b, src + 4 * k, sizeof b);
        a += b;
        memcpy(dst + 4 * k, &a, sizeof a);
    }
}

// Adds len bytes of floats from the ring at off, of which the first `first` bytes lie
// before the ring's end, into at; a float that the end cuts in two is put together first.
static void add_from_ring(const unsigned char* ring, size_t off, size_t first, unsigned char* at,
                          size_t len) {
    size_t whole = first / 4 * 4, cut = first - whole;
    add_floats(at, ring + off, whole / 4);
    if (cut == 0) {
        add_floats(at + first, ring, (len - first) / 4);
        return;
    }
    unsigned char joined[4];
    memcpy(joined, ring + off + whole, cut);
    memcpy(joined + cut, ring, 4 - cut);
    add_floats(at + whole, joined, 1);
    add_floats(at + whole + 4, ring + 4 - cut, (len - whole - 4) / 4);
}

// Moves len bytes (at most the capacity) between at and the ring from offset off on,
// wrapping past its end.
static void ring_copy(unsigned char* ring, size_t capacity, size_t off, unsigned char* at,
                      size_t len, Copy how) {
    size_t first = len < capacity - off ? len : capacity - off;
    if (how == INTO_RING) {
        memcpy(ring + off, at, first);
        memcpy(ring, at + first, len - first);
    } else if (how == OUT_OF_RING) {
        memcpy(at, ring + off, first);
        memcpy(at + first, ring, len - first);
    } else {
        add_from_ring(ring, off, first, at, len);
    }
}

// One direction of an exchange: the pieces of its message and how far it has got.
typedef struct {
    ShmLink link;
    size_t capacity; // the channel's, read once: only the counters are shared as they change
    const struct iovec* pieces;
    int count;
    size_t done, total;  // bytes moved, bytes in all
    unsigned add_floats; // bit i: pieces[i] is added into, not overwritten
    bool sending;
} Stream;

// Moves the stream's next n bytes between its pieces and the ring, from counter pos on.
static void stream_copy(const Stream* s, uint32_t pos, size_t n) {
    size_t skip = s->done;
    for (int i = 0; i < s->count && n > 0; i++) {
        size_t len = s->pieces[i].iov_len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        size_t take = len - skip < n ? len - skip : n;
        Copy how = s->sending                  ? INTO_RING
                   : (s->add_floats >> i & 1u) ? ADDED_FROM_RING
                                               : OUT_OF_RING;
        ring_copy(ring_of(s->link.channel), s->capacity, pos & (s->capacity - 1),
                  (unsigned char*)s->pieces[i].iov_base + skip, take, how);
        pos += (uint32_t)take;
        n -= take;
        skip = 0;
    }
}

// n, cut back so that it does not end inside a float of a piece that is added into.
static size_t whole_floats(const Stream* s, size_t n) {
    size_t end = s->done + n;
    for (int i = 0; i < s->count; i++) {
        if (end <= s->pieces[i].iov_len)
            return (s->add_floats >> i & 1u) ? n - end % 4 : n;
        end -= s->pieces[i].iov_len;
    }
    return n;
}

// ----------------------------------------------------------------------------
// one step each way: what can move now, without waiting

static long futex(_Atomic uint32_t* word, int op, uint32_t value, const struct timespec* timeout) {
    // FUTEX_WAIT and FUTEX_WAKE, not their _PRIVATE forms: the word is shared between
    // processes, so the kernel must key it by the page, not by this address space.
    return syscall(SYS_futex, (uint32_t*)word, op, value, timeout, NULL, 0);
}

// After moving word: wakes the other side if it said it sleeps on word.
static void wake_if_sleeping(_Atomic uint32_t* sleeps, _Atomic uint32_t* word) {
    // The fence orders our store to word before our load of sleeps; the sleeper orders
    // its store to sleeps before its load of word the same way. So either it sees our
    // word and does not sleep, or we see its flag and wake it (Dekker's handshake).
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(sleeps, memory_order_relaxed))
        futex(word, FUTEX_WAKE, INT_MAX, NULL);
}

// The bytes that can move now, given the other side's counter as seen; SIZE_MAX when the
// counters say that more bytes wait than the ring holds (a channel written over).
static size_t movable(const Stream* s, uint32_t other) {
    const ShmChannel* ch = s->link.channel;
    uint32_t own = atomic_load_explicit(s->sending ? &ch->head : &ch->tail, memory_order_relaxed);
    uint32_t waiting = s->sending ? own - other : other - own; // mod 2^32, exact below 2^31
    if (waiting > s->capacity)
        return SIZE_MAX;
    size_t room = s->sending ? s->capacity - waiting : waiting;
    size_t n = room < s->total - s->done ? room : s->total - s->done;
    n = n < SHM_SLICE_BYTES ? n : SHM_SLICE_BYTES;
    return s->sending ? n : whole_floats(s, n);
}

// Step 1) a channel: copies what fits (a slice at most), then publishes it.
static NetStatus channel_step(Stream* s, bool* moved) {
    ShmChannel* ch = s->link.channel;
    _Atomic uint32_t* own = s->sending ? &ch->head : &ch->tail;
    _Atomic uint32_t* other = s->sending ? &ch->tail : &ch->head;
    // acquire: what the other side did before it moved its counter (wrote the bytes,
    // or finished reading them) is done before we touch those bytes.
    size_t n = movable(s, atomic_load_explicit(other, memory_order_acquire));
    if (n == SIZE_MAX) {
        errno = EPROTO;
        return NET_ERROR;
    }
    if (n == 0)
        return NET_OK;
    uint32_t pos = atomic_load_explicit(own, memory_order_relaxed);
    stream_copy(s, pos, n);
    // release: our copying is done before the other side can see the new counter.
    atomic_store_explicit(own, pos + (uint32_t)n, memory_order_release);
    s->done += n;
    wake_if_sleeping(s->sending ? &ch->consumer_sleeps : &ch->producer_sleeps, own);
    *moved = true;
    return NET_OK;
}

// Step 1') a socket: what the kernel takes or gives now.
static NetStatus socket_step(Stream* s, bool* moved) {
    struct iovec rest[NET_MAX_PIECES];
    size_t skip = s->done;
    int n = 0;
    for (int i = 0; i < s->count; i++) {
        if (skip >= s->pieces[i].iov_len) {
            skip -= s->pieces[i].iov_len;
            continue;
        }
        rest[n++] =
            (struct iovec){(char*)s->pieces[i].iov_base + skip, s->pieces[i].iov_len - skip};
        skip = 0;
    }
    struct msghdr msg = {.msg_iov = rest, .msg_iovlen = (size_t)n};
    ssize_t got = s->sending ? sendmsg(s->link.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT)
                             : recvmsg(s->link.fd, &msg, MSG_DONTWAIT);
    if (got > 0) {
        s->done += (size_t)got;
        *moved = true;
        return NET_OK;
    }
    if (got == 0 && !s->sending)
        return NET_CLOSED;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return NET_OK;
    return errno == EPIPE || errno == ECONNRESET ? NET_CLOSED : NET_ERROR;
}

static NetStatus stream_step(Stream* s, bool* moved) {
    if (s->done == s->total)
        return NET_OK;
    return s->link.channel == NULL ? socket_step(s, moved) : channel_step(s, moved);
}

// ----------------------------------------------------------------------------
// waiting: spin, yield, nap

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

// Whether the peer behind a link's socket is still there. A process's sockets close
// when it dies (however it dies): an AF_UNIX peer then reads as POLLHUP, a TCP peer as
// readable with nothing but the end of file to read. Nothing else is ever sent on it.
static NetStatus peer_alive(int fd) {
    if (fd < 0)
        return NET_OK;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 0) < 0)
        return errno == EINTR ? NET_OK : NET_ERROR;
    if (p.revents & POLLNVAL) {
        errno = EBADF;
        return NET_ERROR;
    }
    if (p.revents & (POLLHUP | POLLERR))
        return NET_CLOSED;
    if (!(p.revents & POLLIN))
        return NET_OK;
    char byte;
    ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    bool gone = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
    return gone ? NET_CLOSED : NET_OK; // end of file, or ECONNRESET and its kin
}

static bool pending(const Stream* s) {
    return s->done < s->total;
}

// Step 3a) a nap on a channel's counter, until the other side moves it or the nap ends.
static NetStatus futex_nap(Stream* s, double left) {
    ShmChannel* ch = s->link.channel;
    _Atomic uint32_t* sleeps = s->sending ? &ch->producer_sleeps : &ch->consumer_sleeps;
    _Atomic uint32_t* word = s->sending ? &ch->tail : &ch->head;
    atomic_store_explicit(sleeps, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst); // see wake_if_sleeping
    uint32_t seen = atomic_load_explicit(word, memory_order_relaxed);
    long rc = 0;
    if (movable(s, seen) == 0) {
        double nap = left < SHM_NAP_SECONDS ? left : SHM_NAP_SECONDS;
        struct timespec t = {.tv_sec = 0, .tv_nsec = (long)(nap * 1e9) + 1};
        // The kernel sleeps only while the word still holds seen: a wake-up that came
        // between our look and this call is not lost. EAGAIN (it moved), EINTR and
        // ETIMEDOUT all send us back to look again.
        rc = futex(word, FUTEX_WAIT, seen, &t);
    }
    atomic_store_explicit(sleeps, 0, memory_order_relaxed);
    bool fine = rc == 0 || errno == EAGAIN || errno == EINTR || errno == ETIMEDOUT;
    return fine ? NET_OK : NET_ERROR;
}

// Step 3b) a nap in poll() when a socket takes part: its readiness, and the hang-up
// of a channel's peer; a channel's bytes are looked at again after SHM_SOCKET_NAP_MS.
static NetStatus poll_nap(const Stream* out, const Stream* in, double left) {
    struct pollfd fds[2];
    nfds_t n = 0;
    bool channels = false;
    const Stream* both[2] = {out, in};
    for (int i = 0; i < 2; i++) {
        if (!pending(both[i]) || both[i]->link.fd < 0)
            continue;
        bool channel = both[i]->link.channel != NULL;
        channels |= channel;
        short events = !channel && both[i]->sending ? POLLOUT : POLLIN;
        fds[n++] = (struct pollfd){.fd = both[i]->link.fd, .events = events};
    }
    int ms = channels ? SHM_SOCKET_NAP_MS : (int)(left * 1000.0) + 1;
    if (poll(fds, n, ms) < 0 && errno != EINTR)
        return NET_ERROR;
    return NET_OK; // the next steps see what became ready, and peers_alive who hung up
}

// Liveness of the peers that the exchange still waits for over a channel.
static NetStatus peers_alive(const Stream* out, const Stream* in) {
    NetStatus st = NET_OK;
    if (pending(out) && out->link.channel != NULL)
        st = peer_alive(out->link.fd);
    if (st == NET_OK && pending(in) && in->link.channel != NULL)
        st = peer_alive(in->link.fd);
    return st;
}

// Step 3) idle for a while: a peer that died will never move the bytes; a live one may
// be slow. Sleeps on what blocks: the incoming channel if it is empty (its producer
// wakes us), else the outgoing one (its consumer will).
static NetStatus nap(Stream* out, Stream* in, double left) {
    NetStatus st = peers_alive(out, in);
    if (st != NET_OK)
        return st;
    bool sockets =
        (pending(out) && out->link.channel == NULL) || (pending(in) && in->link.channel == NULL);
    if (sockets)
        return poll_nap(out, in, left);
    return futex_nap(pending(in) ? in : out, left);
}

typedef struct {
    double since; // when the exchange stopped moving bytes
    unsigned looks;
} Idle;

// Step 2) neither direction moved: spins for a few looks, then yields the core until
// SHM_YIELD_SECONDS have passed idle, then naps. NET_OK: look again.
static NetStatus idle(Idle* w, Stream* out, Stream* in, double deadline) {
    if (w->looks++ < SHM_SPIN_LOOKS) {
        cpu_relax();
        return NET_OK;
    }
    double now = timer_seconds();
    if (w->since == 0)
        w->since = now;
    if (now >= deadline)
        return NET_TIMEOUT;
    if (now - w->since < SHM_YIELD_SECONDS) {
        sched_yield();
        return NET_OK;
    }
    return nap(out, in, deadline - now);
}

// ----------------------------------------------------------------------------
// the exchange

static bool stream_init(Stream* s, ShmLink link, const struct iovec* pieces, int count,
                        unsigned add_floats, bool sending) {
    *s = (Stream){.link = link,
                  .pieces = pieces,
                  .count = count,
                  .add_floats = add_floats,
                  .sending = sending};
    if (link.channel != NULL) {
        // A channel that shm_region_create did not make, or whose capacity was written
        // over, would send the copies outside the ring.
        s->capacity = link.channel->capacity;
        if (link.channel->magic != SHM_MAGIC || s->capacity < SHM_MIN_CHANNEL_BYTES ||
            s->capacity > SHM_MAX_CHANNEL_BYTES || (s->capacity & (s->capacity - 1)) != 0)
            return false;
    }
    if (count < 0 || count > NET_MAX_PIECES || (count > 0 && pieces == NULL) ||
        (add_floats >> count) != 0 || (add_floats != 0 && link.channel == NULL))
        return false;
    for (int i = 0; i < count; i++) {
        s->total += pieces[i].iov_len;
        if ((add_floats >> i & 1u) && pieces[i].iov_len % 4 != 0)
            return false;
    }
    return s->total == 0 || link.channel != NULL || link.fd >= 0;
}

NetStatus shm_exchange(ShmLink to, const struct iovec* send, int send_count, ShmLink from,
                       const struct iovec* recv, int recv_count, unsigned add_floats,
                       double deadline) {
    Stream out, in;
    if (!stream_init(&out, to, send, send_count, 0, true) ||
        !stream_init(&in, from, recv, recv_count, add_floats, false)) {
        errno = EINVAL;
        return NET_ERROR;
    }
    Idle w = {0};
    bool peer_died = false;
    while (pending(&out) || pending(&in)) {
        bool moved = false;
        NetStatus st = stream_step(&out, &moved);
        if (st == NET_OK)
            st = stream_step(&in, &moved);
        if (st != NET_OK)
            return st;
        if (moved) {
            w = (Idle){0};
            peer_died = false;
            continue;
        }
        if (peer_died) // and the last look found nothing it left behind
            return NET_CLOSED;
        st = idle(&w, &out, &in, deadline);
        // A peer that died may have written bytes just before: one more look.
        if (st == NET_CLOSED)
            peer_died = true;
        else if (st != NET_OK)
            return st;
    }
    return NET_OK;
}

NetStatus shm_send_all(ShmLink to, const void* buf, size_t len, double deadline) {
    struct iovec piece = {(void*)buf, len};
    return shm_exchange(to, &piece, 1, (ShmLink){NULL, -1}, NULL, 0, 0, deadline);
}

NetStatus shm_recv_all(ShmLink from, void* buf, size_t len, double deadline) {
    struct iovec piece = {buf, len};
    return shm_exchange((ShmLink){NULL, -1}, NULL, 0, from, &piece, 1, 0, deadline);
}
