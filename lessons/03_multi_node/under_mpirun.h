/*
 * under_mpirun.h - lesson 03 under a cluster's own launcher (mpirun, srun): no agents,
 * no rendezvous; MPI numbers the ranks and carries the data.
 *
 * Every process is a worker. under_mpirun.c is compiled and linked only in builds that
 * found mpicc (HAVE_MPI); without it, mpirun_launched() is false and the rest is never
 * called, so multi_node.c reads the same either way.
 *
 * APIs: MpirunRank, MPIRUN_BUILT, mpirun_launched, mpirun_start, mpirun_end.
 */
#ifndef UNDER_MPIRUN_H
#define UNDER_MPIRUN_H

#include <stdbool.h>

#include "collective.h"
#include "config.h"
#include "device.h"

typedef struct {
    int rank, world_size, local_rank;
    Device dev;
    Communicator* comm;
    int checkpoint_lock; // rank 0's hold on --checkpoint-dir, or -1
} MpirunRank;

#ifdef HAVE_MPI
#define MPIRUN_BUILT 1
// Whether an MPI launcher started this process.
bool mpirun_launched(void);
// MPI_Init, this rank's device (chosen by its local rank, before MPI_Init where the
// launcher says it), the training flags' checks, the communicator (NCCL with its id sent
// by MPI_Bcast, or MPI_Allreduce itself) and rank 0's banner. Returns 0, or -1 after a
// message.
int mpirun_start(MpirunRank* r, const TrainConfig* c, const char* backend, int timeout_s,
                 bool debug);
// The end of this rank: a failure (status != 0) ends the whole job through MPI_Abort,
// which mpirun reports with the rank that failed; success finalizes. Returns 0.
int mpirun_end(MpirunRank* r, int status);
#else
#define MPIRUN_BUILT 0
static inline bool mpirun_launched(void) {
    return false;
}
static inline int mpirun_start(MpirunRank* r, const TrainConfig* c, const char* backend,
                               int timeout_s, bool debug) {
    (void)r, (void)c, (void)backend, (void)timeout_s, (void)debug;
    return -1;
}
static inline int mpirun_end(MpirunRank* r, int status) {
    (void)r;
    return status;
}
#endif

#endif
