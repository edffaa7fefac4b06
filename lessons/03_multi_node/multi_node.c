/*
 * multi_node.c - lesson 03: data-parallel training across nodes, one launcher per node.
 *
 * Lesson 02's workers, now on several machines (as `torchrun --nnodes=2
 * --node_rank=R --master_addr=A --master_port=29500` runs DDP). This program is
 * the node agent: exactly one runs on each node. The agents meet at node 0 (the
 * master) over TCP, agree on the world - how many ranks in all, which global
 * ranks live where - and then each forks its workers as lesson 02 does. Global
 * rank = the node's first rank (node_rank * nproc_per_node when every node has as
 * many workers; the sum of the lower nodes' workers in general) + local rank. The
 * connection to the master stays open: when anything fails anywhere, every node
 * stops its workers and exits non-zero within seconds, naming what failed.
 *
 * New since lesson 02: the rendezvous (common/rendezvous.h), global and local
 * ranks, the ring over TCP between machines (comm_ring_connect_tcp), NCCL's unique
 * id carried by the rendezvous, the control channel that spreads failures, and
 * restarts across nodes: with --max-restarts N every node stops its workers, the
 * nodes meet again at the rendezvous, and training resumes from the last checkpoint.
 */
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "checkpoint.h"
#include "collective.h"
#include "config.h"
#include "data.h"
#include "device.h"
#include "mlp.h"
#include "net.h"
#include "rendezvous.h"
#include "replicas.h"
#include "report.h"
#include "timer.h"
#include "trace.h"
#include "workers.h"

#include "under_mpirun.h"

#ifndef BUILD_ID
#define BUILD_ID "unknown"
#endif

// ----------------------------------------------------------------------------
// flags

typedef struct {
    TrainConfig train;
    int nproc;             // --nproc-per-node / --gpus: workers on this node (0: decide)
    const char* backend;   // --backend auto|nccl|ring
    const char* transport; // --transport auto|shm|socket: the ring's bytes within a node
    int timeout_s;         // --timeout: deadline of every collective
    bool debug;            // --debug: print every rendezvous and collective step
    int nnodes;            // --nnodes
    int node_rank;         // --node-rank: 0 is the master
    const char* master_addr;
    int master_port;
    int rdzv_timeout_s;     // --rdzv-timeout: how long to wait for every node
    const char* token_file; // --token-file: the job's shared secret, else DDP_TOKEN
    bool insecure;          // --insecure: several nodes without a token
    int max_restarts;       // --max-restarts: new attempts after a worker fails
    int ring_ports[2];      // --ring-ports LO-HI: the ring's listening ports ({0, 0}: any)
    bool bind;              // --bind: every worker of this node on a CPU of its own
    bool nccl_ifname_given; // NCCL_SOCKET_IFNAME was in the environment at the start
} Options;

// --ring-ports LO-HI: two ports, LO <= HI, into int[2].
static int parse_port_range(const char* flag, const char* value, void* destination, char* why,
                            size_t why_len) {
    int* range = destination;
    int lo, hi, end = 0;
    if (sscanf(value, "%5d-%5d%n", &lo, &hi, &end) != 2 || value[end] != '\0' ||
        !isdigit((unsigned char)value[0]) || lo < 1 || hi > 65535 || lo > hi) {
        snprintf(why, why_len, "%s must be a range of ports LO-HI in [1, 65535], got '%s'", flag,
                 value);
        return -1;
    }
    range[0] = lo, range[1] = hi;
    return 0;
}

// Fills o from the environment (torchrun's variables are the defaults of their flags) and
// argv. Exits with status 0 after --help and EXIT_USAGE after a bad flag.
static void parse_args(Options* o, int argc, char** argv) {
    *o = (Options){.backend = "auto",
                   .transport = "auto",
                   .timeout_s = 60,
                   .nnodes = 1,
                   .master_addr = "127.0.0.1",
                   .master_port = 29500,
                   .rdzv_timeout_s = 300,
                   .nccl_ifname_given = getenv("NCCL_SOCKET_IFNAME") != NULL};
    config_defaults(&o->train);
    // clang-format off
    const Flag flags[] = {
        CONFIG_TRAINING_FLAGS(&o->train),
        {.name = "--nproc-per-node", .alias = "--gpus", .kind = FLAG_INT, .min = 1,
         .max = WORKERS_MAX, .destination = &o->nproc, .value_name = "N",
         .help = "worker processes on this node, one per GPU (default: the number of GPUs, or 2 "
                 "on the CPU)"},
        {.name = "--nnodes", .kind = FLAG_INT, .min = 1, .max = RDZV_MAX_NODES,
         .destination = &o->nnodes, .value_name = "N", .env = "NNODES",
         .help = "nodes in the job (default 1)"},
        {.name = "--node-rank", .kind = FLAG_INT, .min = 0, .max = RDZV_MAX_NODES - 1,
         .destination = &o->node_rank, .value_name = "R", .env = "NODE_RANK",
         .help = "this node's rank, 0 is the master (default 0)"},
        {.name = "--master-addr", .kind = FLAG_TEXT, .destination = &o->master_addr,
         .value_name = "ADDR", .env = "MASTER_ADDR",
         .help = "where node 0 listens (default 127.0.0.1)"},
        {.name = "--master-port", .kind = FLAG_INT, .min = 1, .max = 65535,
         .destination = &o->master_port, .value_name = "PORT", .env = "MASTER_PORT",
         .help = "its port (default 29500)"},
        {.name = "--rdzv-timeout", .kind = FLAG_INT, .min = 1, .max = CONFIG_MAX_TIMEOUT_S,
         .destination = &o->rdzv_timeout_s, .value_name = "SECONDS",
         .help = "how long to wait for every node (default 300)"},
        {.name = "--token-file", .kind = FLAG_TEXT, .destination = &o->token_file,
         .value_name = "FILE",
         .help = "the job's shared secret (default: env DDP_TOKEN)"},
        {.name = "--insecure", .kind = FLAG_SWITCH, .destination = &o->insecure,
         .help = "run a job of several nodes without a token: anyone who can reach the master "
                 "port can join it"},
        {.name = "--backend", .kind = FLAG_CHOICE, .choices = "auto|nccl|ring|mpi",
         .destination = &o->backend, .value_name = "NAME",
         .help = "auto, nccl, ring or mpi (default auto: NCCL when every worker has its own GPU, "
                 "the ring all-reduce otherwise; mpi: MPI_Allreduce, under mpirun -np N "
                 "multi_node)"},
        {.name = "--transport", .kind = FLAG_CHOICE, .choices = "auto|shm|socket",
         .destination = &o->transport, .value_name = "NAME",
         .help = "how the ring's bytes travel between the workers of a node: shared memory or "
                 "TCP (default auto: shm; TCP between nodes)"},
        {.name = "--timeout", .kind = FLAG_INT, .min = 1, .max = CONFIG_MAX_TIMEOUT_S,
         .destination = &o->timeout_s, .value_name = "SECONDS",
         .help = "deadline of every collective (default 60)"},
        {.name = "--ring-ports", .kind = FLAG_CUSTOM, .parse = parse_port_range,
         .destination = o->ring_ports, .value_name = "LO-HI", .env = "DDP_RING_PORTS",
         .help = "the ports where this node's workers listen for the ring, the first free ones "
                 "of LO-HI, one per worker: for a firewall (default: any the kernel gives)"},
        {.name = "--max-restarts", .kind = FLAG_INT, .min = 0, .max = CONFIG_MAX_RESTARTS,
         .destination = &o->max_restarts, .value_name = "N",
         .help = "when a worker fails anywhere, every node stops its workers, the nodes meet "
                 "again and go on from the last checkpoint, up to N times (default 0; the same on "
                 "every node)"},
        {.name = "--bind", .kind = FLAG_SWITCH, .destination = &o->bind,
         .help = "pin this node's worker i to the i-th CPU this process may run on, as mpirun "
                 "does (workers on the CPU only; default: the scheduler places them)"},
        {.name = "--debug", .kind = FLAG_SWITCH, .destination = &o->debug,
         .help = "print every rendezvous and collective step on stderr"},
    };
    // clang-format on
    int status;
    if (!config_parse_or_explain(
            "multi_node",
            "One node's agent of a multi-node job: meets the other nodes at the "
            "master, then trains lesson 01's MLP with its workers, averaging "
            "gradients across every node.",
            flags, sizeof flags / sizeof *flags, argc, argv, &status))
        exit(status);
}

// ----------------------------------------------------------------------------
// the agent: this node's part of the job

typedef struct {
    Options opt;
    int gpus; // GPUs visible on this node
    Backend backend;
    bool shm;                         // the ring's bytes within the node go through shared memory
    ShmRegion* ring_shm;              // the node's ring channels, made anew for every attempt
    int checkpoint_lock;              // node 0's hold on --checkpoint-dir, or -1
    int nproc;                        // workers on this node
    int ring_listen_fds[WORKERS_MAX]; // (nproc) each worker's ring socket, bound before the
                                      // rendezvous
    int id_fds[WORKERS_MAX][2];       // NCCL: a channel from the agent ([0]) to each worker ([1])
    Rdzv rdzv;
    RdzvWorld world;
    char stop_reason[RDZV_TEXT_BYTES]; // why the job stops, as the control channel said
    bool stop_for_good;                // an agent was interrupted: no restart
    char trace_path[RDZV_TEXT_BYTES];  // --trace FILE: node 0's FILE, node k's FILE.nodeK
} Agent;

// With --trace FILE: this node's own file (the clocks of two machines are not one time
// axis), written by the agent, which records its rendezvous and fork there too. Returns
// 0, or -1 with why filled.
static int plan_trace(Agent* a, char* why, size_t why_len) {
    const char* path = a->opt.train.trace_path;
    if (path == NULL)
        return 0;
    int node = a->opt.node_rank;
    if (node == 0)
        snprintf(a->trace_path, sizeof a->trace_path, "%s", path);
    else
        snprintf(a->trace_path, sizeof a->trace_path, "%s.node%d", path, node);
    a->opt.train.trace_path = a->trace_path;
    if (trace_probe(a->trace_path, 0, 0, why, why_len) != 0)
        return -1;
    return trace_start(a->trace_path, TRACE_AGENT, node, -1, false);
}

// Decides this node's workers and backend before anything is forked. Exits with
// EXIT_USAGE when the flags ask for what this machine or build cannot do.
static void make_plan(Agent* a, const Options* o) {
    char why[ERROR_TEXT_BYTES];
    Checkpoint checkpoint; // the workers read it; a bad one fails here, before any fork
    a->opt = *o;
    if (o->node_rank >= o->nnodes) {
        snprintf(why, sizeof why, "--node-rank must be in [0, %d] for --nnodes %d, got %d",
                 o->nnodes - 1, o->nnodes, o->node_rank);
        exit(usage_error(why));
    }
    if (strcmp(o->backend, "mpi") == 0) {
        snprintf(why, sizeof why, "--backend mpi: start the job with mpirun -np N multi_node%s",
                 MPIRUN_BUILT ? "" : " (and build with mpicc installed: this build has no MPI)");
        exit(usage_error(why));
    }
    a->gpus = device_gpus_for_workers(o->train.device, why, sizeof why);
    a->nproc = o->nproc > 0 ? o->nproc : (a->gpus > 0 ? a->gpus : 2);
    // Node 0 writes the checkpoints: its agent holds the directory for the whole job.
    const char* dir = o->train.checkpoint_dir;
    bool writer = o->node_rank == 0 && dir != NULL;
    a->checkpoint_lock = -1;
    int ring_port_count = o->ring_ports[1] - o->ring_ports[0] + 1;
    bool few_ports = o->ring_ports[0] > 0 && ring_port_count < a->nproc;
    if (a->gpus >= 0 && o->nnodes * a->nproc > RDZV_MAX_RANKS)
        snprintf(why, sizeof why, "--nnodes %d x --nproc-per-node %d is more than %d ranks",
                 o->nnodes, a->nproc, RDZV_MAX_RANKS);
    else if (a->gpus >= 0 && few_ports)
        snprintf(why, sizeof why,
                 "--ring-ports %d-%d has %d port%s for this node's %d workers: each needs one",
                 o->ring_ports[0], o->ring_ports[1], ring_port_count,
                 ring_port_count == 1 ? "" : "s", a->nproc);
    if (a->gpus < 0 || o->nnodes * a->nproc > RDZV_MAX_RANKS || few_ports ||
        comm_choose_backend(o->backend, a->gpus, a->nproc, &a->backend, why, sizeof why) != 0 ||
        comm_choose_transport(o->transport, a->backend, &a->shm, why, sizeof why) != 0 ||
        (o->bind && workers_check_bind(a->nproc, a->gpus > 0, why, sizeof why) != 0) ||
        mlp_kernels_check(o->train.kernels, a->gpus > 0, why, sizeof why) != 0 ||
        config_check(&o->train, o->nnodes * a->nproc, why, sizeof why) != 0 ||
        (o->node_rank == 0 && o->train.out_dir != NULL &&
         report_prepare_dir(o->train.out_dir, why, sizeof why) != 0) ||
        (writer && (a->checkpoint_lock = checkpoint_lock(dir, why, sizeof why)) < 0) ||
        checkpoint_find(&o->train, &checkpoint, why, sizeof why) < 0 ||
        plan_trace(a, why, sizeof why) != 0)
        exit(usage_error(why));
    checkpoint_free(&checkpoint);
}

// The job's shared secret (rdzv_read_token). A job of several nodes needs one, or
// --insecure, the user's word that anyone who can reach the master port may join it.
// Exits with EXIT_USAGE when there is none, or a bad one.
static void read_token(const Options* o, RdzvToken* token) {
    char why[ERROR_TEXT_BYTES];
    if (rdzv_read_token(o->token_file, token, why, sizeof why) != 0)
        exit(usage_error(why));
    if (token->warning[0] != '\0')
        fprintf(stderr, "%s\n", token->warning);
    if (o->nnodes == 1 || token->text[0] != '\0')
        return;
    if (!o->insecure) {
        snprintf(why, sizeof why,
                 "a job of %d nodes needs a token, or anyone who can reach %s:%d could join it: "
                 "give every node the same DDP_TOKEN or --token-file (./setup.sh --multi-node "
                 "makes one), or --insecure to run without",
                 o->nnodes, o->master_addr, o->master_port);
        exit(usage_error(why));
    }
    fprintf(stderr,
            "warning: --insecure: no token, so anyone who can reach %s:%d can join "
            "this job\n",
            o->master_addr, o->master_port);
}

// Everything that must be the same on every node, as "key=value ...": the training's
// settings (config_settings, which checkpoints hash too) and the job's.
static void describe_settings(const Agent* a, char* out, size_t len) {
    const TrainConfig* c = &a->opt.train;
    char training[RDZV_TEXT_BYTES / 2];
    config_settings(c, training, sizeof training);
    // phases: every rank joins the gathering of the table, or none does
    snprintf(out, len,
             "%s epochs=%d device=%s backend=%s timeout=%d nnodes=%d max_restarts=%d phases=%d",
             training, c->epochs, a->gpus > 0 ? "cuda" : "cpu",
             a->backend == BACKEND_NCCL ? "nccl" : "ring", a->opt.timeout_s, a->opt.nnodes,
             a->opt.max_restarts, c->phases);
}

// One listening socket per local worker for the ring, on the address by which the
// other nodes reach this one (the address this node's rendezvous traffic uses), on a
// port the kernel picks or the next free one of --ring-ports.
static int bind_ring_listeners(Agent* a, const char* addr, RdzvHello* own) {
    snprintf(own->ring_addr, sizeof own->ring_addr, "%s", addr);
    const int* range = a->opt.ring_ports;
    int next = range[0];
    for (int i = 0; i < a->nproc; i++) {
        a->ring_listen_fds[i] =
            range[0] > 0 ? net_listen_in_range(addr, &next, range[1]) : net_listen(addr, 0);
        if (a->ring_listen_fds[i] < 0 && range[0] > 0 && errno == EADDRINUSE) {
            rank_log("ring: no free port left in --ring-ports %d-%d on %s for worker %d of %d "
                     "(others are in use)",
                     range[0], range[1], addr, i, a->nproc);
            return -1;
        }
        if (a->ring_listen_fds[i] < 0) {
            rank_log("ring: cannot listen on %s: %s", addr, strerror(errno));
            return -1;
        }
        own->ring_ports[i] = net_local_port(a->ring_listen_fds[i]);
    }
    return 0;
}

// NCCL picks an interface of its own for its sockets, and on a machine with several it may
// take one that the other nodes cannot reach; the rendezvous' interface reaches them. So
// the workers get NCCL_SOCKET_IFNAME of the interface with addr, unless the user gave one.
static void use_rendezvous_interface(const Agent* a, const char* addr) {
    char interface[64];
    net_interface_of(addr, interface, sizeof interface);
    if (a->opt.nccl_ifname_given) {
        if (a->opt.debug)
            rank_log("NCCL_SOCKET_IFNAME=%s: yours, left as it is (the rendezvous uses %s, %s)",
                     getenv("NCCL_SOCKET_IFNAME"), interface, addr);
    } else if (strcmp(interface, "?") == 0) {
        if (a->opt.debug)
            rank_log("NCCL_SOCKET_IFNAME: no interface has %s: NCCL picks its own", addr);
    } else if (setenv("NCCL_SOCKET_IFNAME", interface, 1) == 0 && a->opt.debug)
        rank_log("NCCL_SOCKET_IFNAME=%s: the interface of this node's rendezvous address %s "
                 "(set NCCL_SOCKET_IFNAME to choose another)",
                 interface, addr);
}

// Steps 1-4 of the rendezvous (see common/rendezvous.h): a->world is then known.
static int rendezvous(Agent* a, const char* token) {
    const Options* o = &a->opt;
    RdzvHello own = {.node_rank = o->node_rank, .nproc = a->nproc};
    snprintf(own.build_id, sizeof own.build_id, "%s", BUILD_ID);
    snprintf(own.nccl_version, sizeof own.nccl_version, "%s", comm_nccl_version());
    describe_settings(a, own.settings, sizeof own.settings);
    rdzv_init(&a->rdzv, o->nnodes, o->node_rank, o->master_addr, o->master_port, token,
              o->rdzv_timeout_s, o->debug);
    a->rdzv.world_wait_s = o->timeout_s; // WORLD waits for NCCL's id from the master's rank 0
    char addr[RDZV_ADDR_BYTES], why[ERROR_TEXT_BYTES];
    if (o->node_rank == 0) {
        if (rdzv_master_listen(&a->rdzv, why, sizeof why) != 0)
            exit(usage_error(why)); // the port is taken: nothing was started
        net_local_addr(a->rdzv.listen_fd, addr, sizeof addr);
        if (strcmp(addr, "0.0.0.0") == 0) { // every interface: no address to give the others
            snprintf(why, sizeof why,
                     "--master-addr %s: give an address of this node that the other nodes can "
                     "reach, not the wildcard",
                     o->master_addr);
            exit(usage_error(why));
        }
        if (o->nnodes > 1 && strncmp(addr, "127.", 4) == 0)
            rank_log("warning: the master listens on %s, a loopback address: nodes on "
                     "other machines cannot join (give --master-addr this node's address)",
                     addr);
        use_rendezvous_interface(a, addr);
        RETURN_IF_FAILED(bind_ring_listeners(a, addr, &own));
        RETURN_IF_FAILED(rdzv_master_gather(&a->rdzv, &own));
        rdzv_make_world(&a->rdzv, &a->world);
        return 0;
    }
    RETURN_IF_FAILED(rdzv_connect(&a->rdzv));
    net_local_addr(a->rdzv.control_fd[0], addr, sizeof addr);
    use_rendezvous_interface(a, addr);
    RETURN_IF_FAILED(bind_ring_listeners(a, addr, &own));
    return rdzv_join(&a->rdzv, &own, &a->world);
}

// NCCL: a socketpair between the agent ([0]) and each worker ([1]) for the unique id.
static int make_id_channels(Agent* a) {
    for (int i = 0; a->backend == BACKEND_NCCL && i < a->nproc; i++) {
        SYS_CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, a->id_fds[i]));
        SYS_CHECK(net_set_nonblocking(a->id_fds[i][0]));
        SYS_CHECK(net_set_nonblocking(a->id_fds[i][1]));
    }
    return 0;
}

// NCCL's unique id must come from global rank 0, whose process keeps the bootstrap
// root that the others contact. The master's agent takes it from that worker, gives
// it to its other workers and puts it into WORLD; the other agents pass WORLD's on.
static int hand_out_nccl_id(Agent* a) {
    double deadline = timer_seconds() + a->opt.timeout_s;
    int first = 0;
    if (a->opt.node_rank != 0 && !a->world.has_nccl_id) {
        rank_log("the master's WORLD carries no NCCL id, but this node runs NCCL");
        return -1;
    }
    if (a->opt.node_rank == 0) {
        NetStatus st =
            net_recv_all(a->id_fds[0][0], a->world.nccl_id, RDZV_NCCL_ID_BYTES, deadline);
        if (st != NET_OK) {
            rank_log("waiting for NCCL's unique id from rank 0: %s", net_status_str(st));
            return -1;
        }
        a->world.has_nccl_id = true;
        first = 1;
    }
    for (int i = first; i < a->nproc; i++)
        if (net_send_all(a->id_fds[i][0], a->world.nccl_id, RDZV_NCCL_ID_BYTES, deadline) !=
            NET_OK) {
            rank_log("giving NCCL's unique id to local rank %d failed", i);
            return -1;
        }
    return 0;
}

// Called by workers_wait every few milliseconds: a non-zero return stops the workers.
static int watch_control(void* arg) {
    Agent* a = arg;
    RdzvPoll found = rdzv_poll(&a->rdzv, a->stop_reason, sizeof a->stop_reason);
    if (found == RDZV_ALL_WELL)
        return 0;
    a->stop_for_good = found == RDZV_JOB_STOPPED;
    if (a->opt.node_rank == 0) // the master tells every other node
        rdzv_send_abort(&a->rdzv, a->stop_reason, a->stop_for_good);
    return 1;
}

// After the workers: DONE and a clean exit, or ABORT with the cause to everyone.
static int finish(Agent* a, const Workers* w, int status) {
    int node = a->opt.node_rank;
    if (status == 0) {
        status = node == 0 ? rdzv_master_wait_done(&a->rdzv, timer_seconds() + a->opt.timeout_s)
                           : rdzv_send_done(&a->rdzv);
        rdzv_close(&a->rdzv);
        return status == 0 ? 0 : 1;
    }
    // A worker that exited with an error may only have seen another node's failure
    // (its ring neighbour gone): give that node a moment to report its own cause.
    bool interrupted = status > 128; // 128 + signal: this agent was told to stop
    double until = timer_seconds() + 1.0;
    while (a->stop_reason[0] == '\0' && !w->failure_is_signal && !interrupted &&
           timer_seconds() < until && watch_control(a) == 0)
        usleep(10000);
    if (a->stop_reason[0] == '\0') { // the failure is this node's own: tell the others
        snprintf(a->stop_reason, sizeof a->stop_reason, "node %d: %s", node,
                 interrupted             ? "interrupted"
                 : w->failure[0] != '\0' ? w->failure
                                         : "its workers' set-up failed");
        // Whoever stopped this agent means the whole job; what no restart can cure, too.
        a->stop_for_good = interrupted || w->failure_is_for_good;
        rdzv_send_abort(&a->rdzv, a->stop_reason, a->stop_for_good);
    }
    fprintf(stderr, "node %d: job stopped: %s\n", node, a->stop_reason);
    rdzv_close(&a->rdzv);
    return status;
}

// ----------------------------------------------------------------------------
// the data, moved to the device once

// >>> shared "device data": the same in every lesson that has it (tests/test_lessons.c)
typedef struct {
    float* x;           // (n_train + n_eval) every sample's input, on the device
    float* y;           // (n_train + n_eval) every sample's target
    int* train_indices; // (num_samples) this rank's shard of the epoch's order, uploaded each epoch
    int* eval_indices;  // (n_eval) this rank's eval samples: n_train + rank, + rank + N, ...
    int n_eval;         // how many eval samples this rank scores (no padding: none twice)
    int n_eval_total;   // eval samples over all ranks
} DeviceData;

static int upload_data(DeviceData* d, const Kernels* k, const Dataset* data, const Sampler* s) {
    int n_total = data->n_train + data->n_eval;
    d->n_eval_total = data->n_eval;
    d->n_eval = (data->n_eval - s->rank + s->world_size - 1) / s->world_size;
    int* eval_order = malloc_nonzero((size_t)d->n_eval * sizeof(int));
    d->x = k->alloc((size_t)n_total * sizeof(float));
    d->y = k->alloc((size_t)n_total * sizeof(float));
    d->train_indices = k->alloc((size_t)s->num_samples * sizeof(int));
    d->eval_indices = k->alloc((size_t)d->n_eval * sizeof(int));
    if (eval_order == NULL || !d->x || !d->y || !d->train_indices || !d->eval_indices) {
        free(eval_order);
        return -1;
    }
    for (int i = 0; i < d->n_eval; i++)
        eval_order[i] = data->n_train + s->rank + i * s->world_size;
    int err = k->upload(d->x, data->x, (size_t)n_total * sizeof(float)) ||
              k->upload(d->y, data->y, (size_t)n_total * sizeof(float)) ||
              k->upload(d->eval_indices, eval_order, (size_t)d->n_eval * sizeof(int));
    free(eval_order);
    return err ? -1 : 0;
}
// <<< shared "device data"

// >>> shared "release_data": the same in every lesson that has it (tests/test_lessons.c)
static void release_data(DeviceData* d, const Kernels* k) {
    void* buffers[] = {d->x, d->y, d->train_indices, d->eval_indices};
    for (size_t i = 0; i < sizeof buffers / sizeof *buffers; i++)
        if (buffers[i] != NULL)
            k->release(buffers[i]);
}
// <<< shared "release_data"

// ----------------------------------------------------------------------------
// training and evaluation

// >>> shared "train_epoch": the same in every lesson that has it (tests/test_lessons.c)
// One pass over this rank's shard; *train_loss is the mean of the batch losses of all ranks.
static int train_epoch(Mlp* m, Optimizer* opt, Sampler* s, const DeviceData* d, int epoch,
                       int batch_size, Communicator* comm, double* comm_seconds,
                       float* train_loss) {
    sampler_set_epoch(s, epoch);
    RETURN_IF_FAILED(m->k->upload(d->train_indices, s->indices, s->num_samples * sizeof(int)));
    int steps = (s->num_samples + batch_size - 1) / batch_size;
    for (int step = 0; step < steps; step++) {
        int first = step * batch_size;
        int B = s->num_samples - first < batch_size ? s->num_samples - first : batch_size;
        // the batch's mean squared error, divided by steps: the loss sum becomes the mean
        MlpBatch batch = {d->x, d->y, d->train_indices, first, B, 1.0f / ((float)B * steps)};
        // load the batch, forward, loss, backward (mlp.c), as --kernels says
        RETURN_IF_FAILED(mlp_batch_gradients(m, &batch));
        // Data parallelism in one line: every rank's gradients become their mean over
        // the ranks, so every rank takes the same step. (The wait for the backward
        // pass is kept out of the all-reduce's time.)
        RETURN_IF_FAILED(m->k->synchronize());
        double start = timer_seconds();
        RETURN_IF_FAILED(comm_allreduce_mean(comm, m->grads, (size_t)m->num_params,
                                             COMM_CALL("gradients", epoch, step)));
        *comm_seconds += timer_seconds() - start;
        RETURN_IF_FAILED(mlp_update(m, opt));
    }
    RETURN_IF_FAILED(comm_allreduce_mean(comm, m->loss, 1, COMM_CALL("train loss", epoch, -1)));
    return mlp_take_loss(m, train_loss);
}
// <<< shared "train_epoch"

// >>> shared "evaluate": the same in every lesson that has it (tests/test_lessons.c)
// The mean squared error over every eval sample: each rank scores its share, the sum
// over ranks of (its squared errors / all eval samples) is the global mean.
static int evaluate(Mlp* m, const DeviceData* d, Communicator* comm, int epoch, float* eval_loss) {
    for (int first = 0; first < d->n_eval; first += m->max_batch) {
        int B = d->n_eval - first < m->max_batch ? d->n_eval - first : m->max_batch;
        MlpBatch batch = {d->x, d->y, d->eval_indices, first, B, 1.0f / d->n_eval_total};
        RETURN_IF_FAILED(mlp_batch_loss(m, &batch)); // load, forward, loss
    }
    RETURN_IF_FAILED(comm_allreduce_sum(comm, m->loss, 1, COMM_CALL("eval loss", epoch, -1)));
    return mlp_take_loss(m, eval_loss);
}
// <<< shared "evaluate"

// >>> shared "comm time": the same in every lesson that has it (tests/test_lessons.c)
// What the gradients' all-reduce cost: comm_seconds of the total, over epochs.
static void print_comm_time(const Communicator* comm, double comm_seconds, int epochs,
                            double total) {
    (void)comm; // lesson 04 asks it what the buckets cost
    printf("Gradient all-reduce: %.6f seconds per epoch (%.1f%% of the time)\n",
           comm_seconds / epochs, 100.0 * comm_seconds / total);
}
// <<< shared "comm time"

// >>> shared "train": the same in every lesson that has it (tests/test_lessons.c)
// Trains from the start, or from the epoch after resume_from's (unless it is NULL);
// rank 0 (verbose) prints the progress, adds each epoch to report and writes the
// checkpoints.
static int train(Mlp* m, const TrainConfig* c, const DeviceData* d, Sampler* s, Communicator* comm,
                 int world_size, bool verbose, const Checkpoint* resume_from, EpochStats* stats,
                 Report* report) {
    Optimizer opt = {.kind = c->optimizer, .learning_rate = c->learning_rate, .momentum = 0.9f};
    int first_epoch =
        resume_from ? checkpoint_restore(resume_from, c, world_size, m, &opt, stats, verbose) : 0;
    if (first_epoch < 0 ||
        report_open(report, verbose ? c : NULL, world_size, m, stats, first_epoch))
        return -1;
    double comm_seconds = 0.0;
    double start = timer_seconds();
    for (int epoch = first_epoch; epoch < c->epochs; epoch++) {
        double epoch_start = timer_seconds();
        trace_begin_call(TRACE_EPOCH, "epoch", 0, epoch, -1); // ends with the loop's body
        EpochStats* e = &stats[epoch];
        RETURN_IF_FAILED(
            train_epoch(m, &opt, s, d, epoch, c->batch_size, comm, &comm_seconds, &e->train_loss));
        trace_begin(TRACE_EVAL);
        RETURN_IF_FAILED(trace_end(evaluate(m, d, comm, epoch, &e->eval_loss)));
        e->seconds = timer_seconds() - epoch_start;
        if (verbose)
            printf("Epoch [%d/%d] - Train Loss: %.6f, Eval Loss: %.6f\n", epoch + 1, c->epochs,
                   e->train_loss, e->eval_loss);
        RETURN_IF_FAILED(report_add(report, epoch + 1, e));
        // Every rank has the same losses: all stop at a loss that is no longer a number.
        RETURN_IF_FAILED(report_check_finite(e, epoch + 1, verbose));
        if (verbose)
            RETURN_IF_FAILED(checkpoint_save_due(c, world_size, m, &opt, stats, epoch + 1));
        trace_end(0);
    }
    double total = timer_seconds() - start;
    int epochs_run = c->epochs - first_epoch;
    if (verbose)
        printf("Training completed in %.3f seconds\n", total);
    if (verbose && epochs_run > 0) {
        printf("Average time per epoch: %.6f seconds\n", total / epochs_run);
        print_comm_time(comm, comm_seconds, epochs_run, total);
    }
    return c->phases ? trace_report_phases(comm, world_size, total, verbose) : 0;
}
// <<< shared "train"

// ----------------------------------------------------------------------------
// output

static void print_banner(const Agent* a) {
    config_print_banner(&a->opt.train);
    printf("  Nodes: %d\n", a->opt.nnodes);
    printf("  World size: %d\n", a->world.world_size);
    printf("  Backend: %s\n", a->backend == BACKEND_NCCL ? "nccl" : "ring");
}

// >>> shared "process initialized": the same in every lesson that has it (tests/test_lessons.c)
static void print_process_initialized(const Device* dev, int rank, int local_rank, int world_size) {
    char description[512], host[256] = "unknown";
    device_describe(dev, description, sizeof description);
    gethostname(host, sizeof host - 1);
    // The pid, so that a worker can be stopped or killed by hand (the lessons' exercises).
    printf("[Rank %d] Process initialized on %s, pid %d, local_rank: %d, world_size: %d, device: "
           "%s\n",
           rank, host, (int)getpid(), local_rank, world_size, description);
}
// <<< shared "process initialized"

// ----------------------------------------------------------------------------
// a rank: lesson 01's program, with a communicator

// >>> shared "kernels": the same in every lesson that has it (tests/test_lessons.c)
// The model's batches run as --kernels asks, on this rank's device (mlp_kernels_choose);
// verbose: rank 0 says what a GPU runs. A model too large for --kernels fused fails for good.
static int use_kernels(Mlp* m, const TrainConfig* c, const Device* dev, bool verbose) {
    MlpKernels kernels;
    char why[ERROR_TEXT_BYTES], text[128];
    bool on_gpu = dev->kind == DEVICE_CUDA;
    if (config_choose_kernels(c, on_gpu, &kernels, text, sizeof text, why, sizeof why) != 0) {
        rank_log_for_good("error: %s", why);
        return -1;
    }
    if (verbose && on_gpu)
        printf("Kernels: %s\n", text);
    return mlp_use_kernels(m, kernels);
}
// <<< shared "kernels"

// >>> shared "train_rank": the same in every lesson that has it (tests/test_lessons.c)
// Trains one rank's replica to the end and checks it against the others. Returns
// the rank's exit status.
static int train_rank(const TrainConfig* c, const Device* dev, Communicator* comm, int rank,
                      int world_size) {
    if (comm_barrier(comm) != 0) // every rank is up before rank 0 goes on
        return 1;
    Dataset data;
    Sampler sampler;
    Mlp model;
    DeviceData d = {0};
    EpochStats* stats = calloc((size_t)c->epochs, sizeof *stats);
    if (stats == NULL || dataset_create(&data, c->data_size, c->seed) != 0 ||
        sampler_create(&sampler, data.n_train, world_size, rank, c->seed) != 0 ||
        mlp_create(&model, dev->kernels, c->hidden_size, c->batch_size) != 0 ||
        use_kernels(&model, c, dev, rank == 0) != 0 || mlp_init_params(&model, c->seed) != 0 ||
        upload_data(&d, dev->kernels, &data, &sampler) != 0)
        return 1;
    // Every rank made the same weights from the seed; DDP broadcasts rank 0's anyway,
    // so that replicas start equal even when initialisation is not deterministic.
    if (comm_broadcast(comm, model.params, (size_t)model.num_params, 0,
                       COMM_ONCE("initial parameters")) != 0)
        return 1;
    if (rank == 0)
        mlp_print_summary(&model);
    // Every rank reads the checkpoint that it resumes from, if any: all must read the same.
    Checkpoint checkpoint;
    char why[ERROR_TEXT_BYTES];
    int resuming = checkpoint_find(c, &checkpoint, why, sizeof why);
    if (resuming < 0)
        rank_log("%s", why);
    if (resuming < 0 ||
        checkpoint_ranks_agree(comm, rank, world_size, resuming ? &checkpoint : NULL) != 0)
        return 1;

    Report report = {0};
    int status = train(&model, c, &d, &sampler, comm, world_size, rank == 0,
                       resuming ? &checkpoint : NULL, stats, &report) == 0 &&
                         replicas_check(comm, model.k, model.params, (size_t)model.num_params, rank,
                                        world_size) == 0
                     ? 0
                     : 1;
    if (report_close(&report, &data, status == 0) != 0)
        status = 1;
    checkpoint_free(&checkpoint);
    release_data(&d, dev->kernels);
    mlp_free(&model);
    sampler_free(&sampler);
    dataset_free(&data);
    free(stats);
    return status;
}
// <<< shared "train_rank"

// ----------------------------------------------------------------------------
// a worker: one rank's whole life

static int make_communicator(Communicator** comm, const Agent* a, int rank, int local_rank,
                             const Device* dev) {
    int N = a->world.world_size;
    CommSettings s = {.rank = rank,
                      .world_size = N,
                      .timeout_s = a->opt.timeout_s,
                      .debug = a->opt.debug,
                      .k = dev->kernels};
    if (a->backend == BACKEND_RING) {
        int next = (rank + 1) % N, send_fd, recv_fd;
        if (a->opt.debug) {
            char interface[64];
            net_interface_of(a->world.ring_addr[rank], interface, sizeof interface);
            rank_log("ring: listening on %s:%d (interface %s), sending to rank %d at %s:%d",
                     a->world.ring_addr[rank], a->world.ring_port[rank], interface, next,
                     a->world.ring_addr[next], a->world.ring_port[next]);
        }
        trace_begin_named(TRACE_SETUP, "ring connection");
        if (trace_end(comm_ring_connect_tcp(a->ring_listen_fds[local_rank], rank, N,
                                            a->world.ring_addr[next], a->world.ring_port[next],
                                            s.timeout_s, &send_fd, &recv_fd)) != 0)
            return -1;
        if (a->ring_shm == NULL)
            return comm_init_ring(comm, s, send_fd, recv_fd);
        // Within the node the bytes take the channels (the TCP sockets then only tell
        // whether the neighbour lives); the links to other nodes stay TCP. A node's ranks
        // are consecutive, so both ends of every link agree on which it is.
        int nproc = a->nproc;
        bool one_node = a->opt.nnodes == 1;
        ShmLink send = {
            local_rank + 1 < nproc || one_node ? shm_region_channel(a->ring_shm, local_rank) : NULL,
            send_fd};
        ShmLink recv = {local_rank > 0 || one_node
                            ? shm_region_channel(a->ring_shm, (local_rank + nproc - 1) % nproc)
                            : NULL,
                        recv_fd};
        return comm_init_ring_links(comm, s, send, recv);
    }
    // The agent relays NCCL's id: from global rank 0 up to the master's agent, into WORLD,
    // and down to every other worker.
    NcclIdRoute route = {.transport = NCCL_ID_BY_RELAY, .relay_fd = a->id_fds[local_rank][1]};
    return comm_init_nccl(comm, s, &route);
}

// Closes what the worker inherited of its siblings and of the agent, so that a peer's
// death reaches it as an end of file rather than as silence.
static void keep_own_fds(Agent* a, int local_rank) {
    for (int i = 0; i < a->nproc; i++) {
        if (i != local_rank)
            close(a->ring_listen_fds[i]);
        if (a->backend == BACKEND_NCCL) {
            close(a->id_fds[i][0]);
            if (i != local_rank)
                close(a->id_fds[i][1]);
        }
    }
}

static int worker_main(int local_rank, void* arg) {
    Agent* a = arg;
    keep_own_fds(a, local_rank);
    const TrainConfig* c = &a->opt.train;
    int rank = a->world.rank_offset[a->opt.node_rank] + local_rank;
    Device dev;
    char why[ERROR_TEXT_BYTES];
    if (device_open(&dev, c->device, a->gpus > 0 ? local_rank % a->gpus : 0, why, sizeof why) !=
        0) {
        rank_log("%s", why);
        return 1;
    }
    bool tracing = c->trace_path != NULL || c->phases;
    if (tracing && trace_start(c->trace_path, TRACE_WORKER, a->opt.node_rank, rank,
                               dev.kind == DEVICE_CUDA) != 0)
        return 1;
    Communicator* comm = NULL;
    if (make_communicator(&comm, a, rank, local_rank, &dev) != 0)
        return 1;
    print_process_initialized(&dev, rank, local_rank, a->world.world_size);
    int status = train_rank(c, &dev, comm, rank, a->world.world_size);
    if (status == 0)
        comm_destroy(comm);
    else // the others may be stuck in a collective with us: do not wait for them
        comm_abort(comm);
    // Even after a failure: what this rank did up to it, for the agent to merge.
    return trace_write_part() == 0 ? status : 1;
}

// ----------------------------------------------------------------------------
// under mpirun: no agents, no rendezvous (under_mpirun.c); every process is a worker

static int run_under_mpirun(const Options* o) {
    if (o->train.trace_path != NULL) // no agent to merge the ranks' parts
        exit(usage_error("--trace: not under mpirun (--phases is)"));
    if (o->bind)
        exit(usage_error(WORKERS_BIND_UNDER_MPIRUN));
    MpirunRank r;
    int status = 1;
    if (mpirun_start(&r, &o->train, o->backend, o->timeout_s, o->debug) == 0 &&
        (!o->train.phases ||
         trace_start(NULL, TRACE_WORKER, 0, r.rank, r.dev.kind == DEVICE_CUDA) == 0)) {
        print_process_initialized(&r.dev, r.rank, r.local_rank, r.world_size);
        status = train_rank(&o->train, &r.dev, r.comm, r.rank, r.world_size);
    }
    return mpirun_end(&r, status);
}

// ----------------------------------------------------------------------------
// one attempt at the job

// The rendezvous, this node's workers to their end, and the job's end. Returns the
// node's exit status; a->stop_reason says why when the workers failed.
static int run_job(Agent* a, const char* token) {
    trace_begin_named(TRACE_SETUP, "rendezvous");
    if (trace_end(rendezvous(a, token)) != 0)
        return EXIT_FAILURE;
    if (a->opt.node_rank == 0)
        print_banner(a);

    Workers workers;
    int first_rank = a->world.rank_offset[a->opt.node_rank];
    trace_begin_named(TRACE_SETUP, "fork");
    if (make_id_channels(a) != 0 ||
        (a->shm && (a->ring_shm = comm_ring_shm(a->nproc, 0)) == NULL) ||
        trace_end(workers_start(&workers, a->nproc, first_rank, a->opt.bind, worker_main, a)) != 0)
        return EXIT_FAILURE;
    shm_region_unmap(a->ring_shm);
    a->ring_shm = NULL;
    for (int i = 0; i < a->nproc; i++) { // the workers have them now
        close(a->ring_listen_fds[i]);
        if (a->backend == BACKEND_NCCL)
            close(a->id_fds[i][1]);
    }
    int status = 0;
    if (a->backend == BACKEND_NCCL)
        status = hand_out_nccl_id(a);
    // Step 4) the master sends WORLD once it is complete (with NCCL's id, if any).
    if (status == 0 && a->opt.node_rank == 0)
        status = rdzv_master_send_world(&a->rdzv, &a->world);
    if (status != 0) {
        workers_stop(&workers);
        status = 1;
    } else
        status = workers_wait(&workers, watch_control, a);
    // This node's file: the agent's spans and each worker's part (a failed job's too).
    if (a->opt.train.trace_path != NULL &&
        trace_merge(a->opt.train.trace_path, first_rank, a->nproc) != 0 && status == 0)
        status = 1;
    return finish(a, &workers, status);
}

// ----------------------------------------------------------------------------

int main(int argc, char** argv) {
    setvbuf(stdout, NULL, _IOLBF, 0); // whole lines, even into a pipe
    Options o;
    parse_args(&o, argc, argv);
    if (mpirun_launched())
        return run_under_mpirun(&o);
    Agent plan = {0};
    make_plan(&plan, &o);
    RdzvToken token;
    read_token(&o, &token);
    for (int restart = 1;; restart++) {
        Agent a = plan;
        int status = run_job(&a, token.text);
        // Only a failure of the workers (stop_reason) is worth another attempt, not an
        // interrupted agent, here or elsewhere, nor a failure that would come back
        // (stop_for_good: a full disk, a diverged run).
        if (status == 0 || status > 128 || a.stop_reason[0] == '\0' || o.max_restarts == 0)
            return status;
        if (a.stop_for_good) {
            fprintf(stderr, "node %d: no restart: it could not cure what ended the job: %s\n",
                    o.node_rank, a.stop_reason);
            return status;
        }
        if (restart > o.max_restarts) {
            fprintf(stderr, "node %d: no restarts left (%d used): the job ends after: %s\n",
                    o.node_rank, o.max_restarts, a.stop_reason);
            return status;
        }
        fprintf(stderr, "node %d: restart %d/%d after: %s\n", o.node_rank, restart, o.max_restarts,
                a.stop_reason);
        plan.opt.train.resume_if_present = true; // from the last checkpoint, if one was written
    }
}
