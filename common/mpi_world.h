/*
 * mpi_world.h - running under mpirun (or srun): MPI numbers the ranks and moves the data.
 *
 * Clusters often start jobs with a launcher of their own. Then there is no agent and
 * no rendezvous: every process is a worker, MPI tells it its rank, the world size and
 * its local rank (its place among the ranks of its host), MPI_Bcast carries NCCL's
 * unique id, and MPI_Allreduce can serve as the CPU collective. Built only when mpicc
 * is found (HAVE_MPI); nothing else in common/ depends on it.
 *
 * APIs: mpi_launched, mpi_local_rank_from_launcher, mpi_world_init, mpi_collectives,
 * mpi_broadcast_bytes, mpi_world_abort, mpi_world_finalize.
 */
#ifndef MPI_WORLD_H
#define MPI_WORLD_H

#include <stdbool.h>
#include <stddef.h>

#include "collective.h"

#ifdef __cplusplus
extern "C" {
#endif

// Whether an MPI launcher started this process (Open MPI's mpirun, PMI or PMIx, as srun
// with --mpi=pmi2 or pmix).
bool mpi_launched(void);
// This process's local rank as the launcher's environment says it, before MPI_Init
// (so that a GPU can be chosen first), or -1 if it does not say.
int mpi_local_rank_from_launcher(void);
// MPI_Init, then this process's rank, the world size and its local rank. 0 or -1.
int mpi_world_init(int* rank, int* world_size, int* local_rank);
// MPI_COMM_WORLD's all-reduce, broadcast and barrier, for comm_init_host.
HostCollectives mpi_collectives(void);
// Every rank gets root's len bytes (NCCL's unique id). 0 or -1.
int mpi_broadcast_bytes(void* bytes, size_t len, int root);
// Ends every rank of the job (the launcher reports it), with status. Before MPI_Init it
// returns: the caller's exit with status is what ends the job then.
void mpi_world_abort(int status);
void mpi_world_finalize(void);

#ifdef __cplusplus
}
#endif

#endif
