/*
 * rendezvous.h - how the nodes of a multi-node job find each other (like torchrun's).
 *
 * Node 0's agent is the master: it listens on --master-addr:--master-port. The
 * other agents connect (retrying until the deadline, so start order does not
 * matter) and introduce themselves with HELLO. The master checks each one and
 * refuses, with a reason, a wrong token, another build, other settings, a node
 * rank out of range or already taken. When every node is in, it stops
 * listening and sends WORLD: the world size, each node's first global rank,
 * and what the collectives need (NCCL's unique id, or where every rank's ring
 * socket listens). The connections stay open as control channels: ABORT
 * travels through them when anything fails, DONE when a node has finished.
 *
 * Every message has a fixed header (magic, version, type, payload length) and
 * is length-checked before use; nothing from the wire is trusted.
 *
 * APIs: RdzvHello, RdzvWorld, Rdzv, rdzv_init, rdzv_master_listen, rdzv_master_gather,
 *       rdzv_make_world, rdzv_master_send_world, rdzv_connect, rdzv_join, rdzv_send_abort,
 *       rdzv_send_done, rdzv_poll, rdzv_master_wait_done, rdzv_close.
 */
#ifndef RENDEZVOUS_H
#define RENDEZVOUS_H

#include <stdbool.h>
#include <stddef.h>

#include "workers.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RDZV_MAGIC 0x44445052u // "DDPR"
#define RDZV_VERSION 1
#define RDZV_MAX_NODES 64
#define RDZV_MAX_RANKS 256
#define RDZV_MAX_PAYLOAD 65536 // a longer length field is garbage, not a message
#define RDZV_TOKEN_BYTES 64
#define RDZV_TEXT_BYTES 1024
#define RDZV_ADDR_BYTES 16
#define RDZV_NCCL_ID_BYTES 128

// What a node tells the master about itself.
typedef struct {
    int node_rank;
    int nproc;                        // workers on this node
    char token[RDZV_TOKEN_BYTES + 1]; // the job's shared secret
    char build_id[64];                // nodes must run the same build
    char nccl_version[16];            // "2.28.9" or "none"
    char settings[RDZV_TEXT_BYTES];   // "key=value ..." of everything that must match
    char ring_addr[RDZV_ADDR_BYTES];  // where this node's workers listen for the ring
    int ring_ports[WORKERS_MAX];      // (nproc) one port per local worker
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

typedef struct {
    int nnodes;
    int node_rank;
    const char* master_addr;
    int master_port;
    double timeout_s;    // the whole rendezvous
    double world_wait_s; // how much longer a node waits for WORLD: the master's set-up after
                         // the last node is in (0 unless set after rdzv_init)
    bool debug;
    int listen_fd;                   // master only, until the world is formed
    int control_fd[RDZV_MAX_NODES];  // master: one per node (by node rank); node: [0]
    bool done[RDZV_MAX_NODES];       // master: which nodes said DONE
    RdzvHello hello[RDZV_MAX_NODES]; // master: every node's HELLO
} Rdzv;

// Prepares r: the settings from the arguments, no connections yet.
void rdzv_init(Rdzv* r, int nnodes, int node_rank, const char* master_addr, int master_port,
               double timeout_s, bool debug);

// Master: binds master_addr:master_port. Returns 0, or -1 after printing
// "bind ADDR:PORT: REASON; use --master-port or stop the old run".
int rdzv_master_listen(Rdzv* r);
// Master: collects every other node's HELLO (own is node 0's) until all are in or
// the deadline passes, refusing bad ones. Returns 0, or -1 after a message.
int rdzv_master_gather(Rdzv* r, const RdzvHello* own);
// Master: the world that the gathered HELLOs describe.
void rdzv_make_world(const Rdzv* r, RdzvWorld* world);
int rdzv_master_send_world(Rdzv* r, const RdzvWorld* world);
// Node: connects to the master, retrying until the deadline. Returns 0, or -1 after
// a message saying what it tried (refused, timed out, no route) with a hint.
int rdzv_connect(Rdzv* r);
// Node: sends own over the connection, waits for WORLD. Returns 0, or -1 after a
// message (refused, with the master's reason, or timed out).
int rdzv_join(Rdzv* r, const RdzvHello* own, RdzvWorld* world);

// Node: tells the master; master: tells every node. Best effort, never blocks long.
void rdzv_send_abort(Rdzv* r, const char* reason);
int rdzv_send_done(Rdzv* r);
// Looks at the control channels without waiting. Returns 0 when all is well, 1 when
// the job must stop (an ABORT arrived or a peer went away), with the cause in reason.
int rdzv_poll(Rdzv* r, char* reason, size_t reason_len);
// Master: waits for DONE from every node until the deadline. Returns 0 or -1.
int rdzv_master_wait_done(Rdzv* r, double deadline);
void rdzv_close(Rdzv* r);

#ifdef __cplusplus
}
#endif

#endif
