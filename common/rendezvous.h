/*
 * rendezvous.h - how the nodes of a multi-node job find each other (like torchrun's).
 *
 * Node 0's agent is the master: it listens on --master-addr:--master-port. The
 * other agents connect (retrying until the deadline, so start order does not
 * matter). The proof of the job's token goes both ways, and the token itself never
 * crosses the network:
 *   - the master sends each connection a CHALLENGE of 32 fresh random bytes; the
 *     node answers with HELLO, which introduces it, carries a challenge of the
 *     node's own (32 fresh bytes) and a proof that it knows the token: HMAC-SHA256
 *     keyed with the token over the master's challenge and HELLO's fields;
 *   - WORLD carries the master's proof: HMAC-SHA256 keyed with the token over both
 *     challenges and WORLD's own bytes. A node believes no WORLD without it, so a
 *     machine that answers on the master's address without the token cannot send a
 *     node's workers anywhere.
 * An answer recorded on one connection is worthless on the next, whose challenges
 * differ. The master checks each HELLO and refuses, with a reason, a wrong proof (a
 * wrong token or a replayed answer), another build, other settings, a node rank out
 * of range or already taken. It serves the connections that arrive side by side,
 * each with a few seconds to answer, so a flood of silent strangers cannot hold the
 * real nodes back, and the whole gather has one deadline. When every node is in, it
 * stops listening and sends WORLD: the world size, each node's first global rank,
 * and what the collectives need (NCCL's unique id, or where every rank's ring socket
 * listens). The connections stay open as control channels: ABORT travels through
 * them when anything fails (the job may restart), STOP when an agent was interrupted
 * (the job ends for good), DONE when a node has finished.
 *
 * Every message has a fixed header (magic, version, type, payload length) and
 * is length-checked before use; nothing from the wire is trusted. The checks that
 * every arriving message passes are also rdzv_decode_message, which takes raw bytes,
 * so that they can be tested (and fuzzed) without a socket.
 *
 * APIs: RdzvHello, RdzvWorld, RdzvType, RdzvMessage, Rdzv, RdzvToken, rdzv_read_token, rdzv_init,
 *       rdzv_master_listen,
 *       rdzv_master_gather, rdzv_make_world, rdzv_master_send_world, rdzv_connect, rdzv_join,
 *       rdzv_send_abort, rdzv_send_done, rdzv_poll, rdzv_master_wait_done, rdzv_close,
 *       rdzv_decode_message.
 */
#ifndef RENDEZVOUS_H
#define RENDEZVOUS_H

#include <stdbool.h>
#include <stddef.h>

#include "check.h"
#include "workers.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RDZV_MAGIC 0x44445052u // "DDPR"
#define RDZV_VERSION 3         // 3: the node's challenge in HELLO, the master's proof in WORLD
#define RDZV_HEADER_BYTES 12
#define RDZV_MAX_NODES 64
#define RDZV_MAX_RANKS 256
#define RDZV_MAX_PAYLOAD 65536 // a longer length field is garbage, not a message
#define RDZV_TOKEN_BYTES 64
#define RDZV_TEXT_BYTES 1024
#define RDZV_ADDR_BYTES 16
#define RDZV_NCCL_ID_BYTES 128
#define RDZV_CHALLENGE_BYTES 32
#define RDZV_PROOF_BYTES 32 // an HMAC-SHA256
#define RDZV_MAX_PENDING 64 // connections the master serves at once before they answer

// What a node tells the master about itself.
typedef struct {
    int node_rank;
    int nproc;                                 // workers on this node
    char build_id[64];                         // nodes must run the same build
    char nccl_version[16];                     // "2.28.9" or "none"
    char settings[RDZV_TEXT_BYTES];            // "key=value ..." of everything that must match
    char ring_addr[RDZV_ADDR_BYTES];           // where this node's workers listen for the ring
    int ring_ports[WORKERS_MAX];               // (nproc) one port per local worker
    unsigned char nonce[RDZV_CHALLENGE_BYTES]; // the node's challenge to the master
} RdzvHello;

// What the master tells every node once all are in.
typedef struct {
    int world_size;
    int nnodes;
    int nproc[RDZV_MAX_NODES];       // workers per node
    int rank_offset[RDZV_MAX_NODES]; // global rank of each node's local rank 0
    char ring_addr[RDZV_MAX_RANKS][RDZV_ADDR_BYTES];
    int ring_port[RDZV_MAX_RANKS];
    bool has_nccl_id;
    unsigned char nccl_id[RDZV_NCCL_ID_BYTES];
} RdzvWorld;

typedef enum {
    RDZV_HELLO = 1,
    RDZV_WORLD = 2,
    RDZV_REFUSE = 3,
    RDZV_ABORT = 4,
    RDZV_DONE = 5,
    RDZV_CHALLENGE = 6,
    RDZV_STOP = 7,
} RdzvType;

// One message as rdzv_decode_message found it: the fields of its type are set, the
// others are zero.
typedef struct {
    RdzvType type;
    RdzvHello hello;                               // HELLO
    unsigned char proof[RDZV_PROOF_BYTES];         // HELLO, WORLD: the sender's proof
    size_t signed_len;                             // HELLO, WORLD: payload bytes it covers
    unsigned char challenge[RDZV_CHALLENGE_BYTES]; // CHALLENGE
    RdzvWorld world;                               // WORLD
    char text[RDZV_TEXT_BYTES];                    // REFUSE, ABORT, STOP: the reason
} RdzvMessage;

typedef struct {
    int nnodes;
    int node_rank;
    const char* master_addr;
    int master_port;
    char token[RDZV_TOKEN_BYTES + 1]; // the job's shared secret: the key of every proof
    double timeout_s;                 // the whole rendezvous
    double world_wait_s; // how much longer a node waits for WORLD: the master's set-up after
                         // the last node is in (0 unless set after rdzv_init)
    bool debug;
    int listen_fd;                   // master only, until the world is formed
    int control_fd[RDZV_MAX_NODES];  // master: one per node (by node rank); node: [0]
    bool done[RDZV_MAX_NODES];       // master: which nodes said DONE
    RdzvHello hello[RDZV_MAX_NODES]; // master: every node's HELLO (with its challenge)
    int ignored;                     // master: connections ignored in this gather
    // the challenge sent to each node (master), or answered (node: [0])
    unsigned char challenge[RDZV_MAX_NODES][RDZV_CHALLENGE_BYTES];
} Rdzv;

// The job's shared secret, as rdzv_read_token found it.
typedef struct {
    char text[RDZV_TOKEN_BYTES + 1]; // "" for none
    char warning[ERROR_TEXT_BYTES];  // what to warn about it, or ""
} RdzvToken;

// The job's shared secret: the first line of token_file (unless NULL), else $DDP_TOKEN,
// else none. The file must be a regular file (a FIFO would block), its first line a
// token of 1 to RDZV_TOKEN_BYTES characters; a file that other users can read is
// warned about, as ssh warns about keys. Returns 0, or -1 with the reason in why.
int rdzv_read_token(const char* token_file, RdzvToken* token, char* why, size_t why_len);

// Prepares r: the settings from the arguments, no connections yet. token is the job's
// secret ("" for none), at most RDZV_TOKEN_BYTES characters.
void rdzv_init(Rdzv* r, int nnodes, int node_rank, const char* master_addr, int master_port,
               const char* token, double timeout_s, bool debug);

// Master: binds master_addr:master_port. Returns 0, or -1 with
// "bind ADDR:PORT: REASON; use --master-port or stop the old run" in why.
int rdzv_master_listen(Rdzv* r, char* why, size_t why_len);
// Master: challenges every connection and collects every other node's HELLO (own is
// node 0's) until all are in or the deadline passes, refusing bad ones and logging
// each one line. Returns 0, or -1 after a message.
int rdzv_master_gather(Rdzv* r, const RdzvHello* own);
// Master: the world that the gathered HELLOs describe.
void rdzv_make_world(const Rdzv* r, RdzvWorld* world);
int rdzv_master_send_world(Rdzv* r, const RdzvWorld* world);
// Node: connects to the master, retrying until the deadline. Returns 0, or -1 after
// a message saying what it tried (refused, timed out, no route) with a hint.
int rdzv_connect(Rdzv* r);
// Node: answers the master's CHALLENGE with own in HELLO (and a challenge of its own),
// waits for WORLD and checks the master's proof in it. Returns 0, or -1 after a message
// (refused or stopped, with the master's reason; a master without the token; timed out).
int rdzv_join(Rdzv* r, const RdzvHello* own, RdzvWorld* world);

// Node: tells the master; master: tells every node that the job stops: as ABORT, or as
// STOP when for_good (no restart). Best effort, never blocks long.
void rdzv_send_abort(Rdzv* r, const char* reason, bool for_good);
int rdzv_send_done(Rdzv* r);
// What rdzv_poll found on the control channels.
typedef enum {
    RDZV_ALL_WELL = 0,
    RDZV_JOB_FAILED = 1,  // an ABORT arrived or a peer went away: a restart may follow
    RDZV_JOB_STOPPED = 2, // a STOP arrived: the job ends for good
} RdzvPoll;
// Looks at the control channels without waiting; the cause of a stop goes into reason.
RdzvPoll rdzv_poll(Rdzv* r, char* reason, size_t reason_len);
// Master: waits for DONE from every node until the deadline. Returns 0 or -1.
int rdzv_master_wait_done(Rdzv* r, double deadline);
void rdzv_close(Rdzv* r);

// Checks and decodes one message as it came from the wire: the 12-byte header, then the
// payload, len bytes in all. Returns 0 with out set, or -1 with the reason in why. It
// reads nothing outside bytes[0, len) and trusts none of them.
int rdzv_decode_message(RdzvMessage* out, const unsigned char* bytes, size_t len, char* why,
                        size_t why_len);

#ifdef __cplusplus
}
#endif

#endif
