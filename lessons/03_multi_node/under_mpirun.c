/*
 * under_mpirun.c - lesson 03 under mpirun or srun (see under_mpirun.h). Compiled with
 * mpicc, only in builds that found it.
 *
 * New here: MPI as launcher (common/mpi_world.h): MPI numbers the ranks, tells each its
 * local rank, carries NCCL's unique id (MPI_Bcast) or is the collective itself
 * (MPI_Allreduce behind the communicator, as --backend mpi).
 */
#include "under_mpirun.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "checkpoint.h"
#include "mpi_world.h"
#include "report.h"

bool mpirun_launched(void) {
    return mpi_launched();
}

static void print_mpi_banner(const TrainConfig* c, int world_size, Backend backend) {
    config_print_banner(c);
    printf("  Launcher: mpirun\n");
    printf("  World size: %d\n", world_size);
    printf("  Backend: %s\n", backend == BACKEND_NCCL ? "nccl" : "mpi");
}

// The engine under mpirun: NCCL (its id through MPI_Bcast) or MPI_Allreduce itself.
static int make_mpi_communicator(MpirunRank* r, const char* backend, int timeout_s, bool debug) {
    CommSettings s = {.rank = r->rank,
                      .world_size = r->world_size,
                      .timeout_s = timeout_s,
                      .debug = debug,
                      .k = r->dev.kernels};
    bool nccl = strcmp(backend, "nccl") == 0 ||
                (strcmp(backend, "auto") == 0 && r->dev.kind == DEVICE_CUDA &&
                 strcmp(comm_nccl_version(), "none") != 0);
    if (strcmp(backend, "ring") == 0) {
        rank_log("--backend ring needs the agents' rendezvous; under mpirun use mpi or nccl");
        return -1;
    }
    if (!nccl)
        return comm_init_host(&r->comm, s, mpi_collectives());
    NcclIdRoute route = {.transport = NCCL_ID_BY_BROADCAST, .broadcast = mpi_broadcast_bytes};
    return comm_init_nccl(&r->comm, s, &route);
}

// This rank's device: GPU local_rank mod the GPUs, or the CPU.
static int open_device(MpirunRank* r, const char* request, int local_rank) {
    char why[ERROR_TEXT_BYTES];
    int gpus = strcmp(request, "cpu") == 0 ? 0 : device_gpu_count(); // no fork: CUDA is fine
    if (device_open(&r->dev, request, gpus > 0 ? local_rank % gpus : 0, why, sizeof why) != 0) {
        rank_log("%s", why);
        return -1;
    }
    return 0;
}

int mpirun_start(MpirunRank* r, const TrainConfig* c, const char* backend, int timeout_s,
                 bool debug) {
    char why[ERROR_TEXT_BYTES];
    *r = (MpirunRank){.checkpoint_lock = -1};
    // The device comes first where the launcher says the local rank: a CUDA-aware MPI
    // then sets up its transport for the GPU this rank will use.
    int launcher_local_rank = mpi_local_rank_from_launcher();
    if (launcher_local_rank >= 0 && open_device(r, c->device, launcher_local_rank) != 0)
        return -1;
    RETURN_IF_FAILED(mpi_world_init(&r->rank, &r->world_size, &r->local_rank));
    rank_log_set_rank(r->rank);
    if (launcher_local_rank < 0)
        RETURN_IF_FAILED(open_device(r, c->device, r->local_rank));
    // Rank 0 writes --out and the checkpoints, and holds the checkpoint directory.
    bool writer = r->rank == 0;
    if (config_check(c, r->world_size, why, sizeof why) != 0 ||
        (writer && c->out_dir != NULL && report_prepare_dir(c->out_dir, why, sizeof why)) ||
        (writer && c->checkpoint_dir != NULL &&
         (r->checkpoint_lock = checkpoint_lock(c->checkpoint_dir, why, sizeof why)) < 0)) {
        rank_log("error: %s", why);
        return -1;
    }
    RETURN_IF_FAILED(make_mpi_communicator(r, backend, timeout_s, debug));
    if (r->rank == 0)
        print_mpi_banner(c, r->world_size, comm_backend(r->comm));
    return 0;
}

int mpirun_end(MpirunRank* r, int status) {
    if (status != 0) {
        rank_log("failed: ending the MPI job");
        mpi_world_abort(status);
        return status; // (failed before MPI_Init: there is nothing to finalize)
    }
    comm_destroy(r->comm);
    mpi_world_finalize();
    return 0;
}
