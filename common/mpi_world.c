/*
 * mpi_world.c - MPI as launcher and collective (see mpi_world.h). Compiled with mpicc.
 */
#include "mpi_world.h"

#include <mpi.h>
#include <stdlib.h>

#include "check.h"

bool mpi_launched(void) {
    // Set for each rank by the launcher itself, not merely inside a batch job: Open MPI's
    // mpirun, PMI (MPICH's Hydra, srun --mpi=pmi2) and PMIx (srun --mpi=pmix, prterun).
    const char* vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++)
        if (getenv(vars[i]) != NULL)
            return true;
    return false;
}

int mpi_local_rank_from_launcher(void) {
    // Open MPI, MPICH's Hydra (and Intel MPI), Slurm's srun, PMIx launchers.
    const char* vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID",
                          "PMIX_LOCAL_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char* v = getenv(vars[i]);
        char* end = NULL;
        long rank = v != NULL ? strtol(v, &end, 10) : -1;
        if (v != NULL && *v != '\0' && *end == '\0' && rank >= 0 && rank < 1 << 20)
            return (int)rank;
    }
    return -1;
}

// Reports a failed MPI call as check_report does, and returns -1.
static int mpi_failed(int err, const char* what) {
    char reason[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(err, reason, &len);
    rank_log("%s: %s", what, reason);
    return -1;
}

int mpi_world_init(int* rank, int* world_size, int* local_rank) {
    int err = MPI_Init(NULL, NULL);
    if (err != MPI_SUCCESS)
        return mpi_failed(err, "MPI_Init");
    // Errors come back as codes to report, instead of ending the process at once.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, world_size);
    // The ranks that share this host, as NCCL's one-device-per-process example counts them.
    MPI_Comm host;
    err = MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, *rank, MPI_INFO_NULL, &host);
    if (err != MPI_SUCCESS)
        return mpi_failed(err, "MPI_Comm_split_type");
    MPI_Comm_rank(host, local_rank);
    MPI_Comm_free(&host);
    return 0;
}

static int mpi_allreduce_sum(void* ctx, float* buf, size_t count) {
    (void)ctx;
    int err = MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    return err == MPI_SUCCESS ? 0 : mpi_failed(err, "MPI_Allreduce");
}

static int mpi_broadcast(void* ctx, float* buf, size_t count, int root) {
    (void)ctx;
    int err = MPI_Bcast(buf, (int)count, MPI_FLOAT, root, MPI_COMM_WORLD);
    return err == MPI_SUCCESS ? 0 : mpi_failed(err, "MPI_Bcast");
}

static int mpi_barrier(void* ctx) {
    (void)ctx;
    int err = MPI_Barrier(MPI_COMM_WORLD);
    return err == MPI_SUCCESS ? 0 : mpi_failed(err, "MPI_Barrier");
}

HostCollectives mpi_collectives(void) {
    return (HostCollectives){"mpi", mpi_allreduce_sum, mpi_broadcast, mpi_barrier, NULL};
}

int mpi_broadcast_bytes(void* bytes, size_t len, int root) {
    int err = MPI_Bcast(bytes, (int)len, MPI_BYTE, root, MPI_COMM_WORLD);
    return err == MPI_SUCCESS ? 0 : mpi_failed(err, "MPI_Bcast");
}

void mpi_world_abort(int status) {
    // A rank can fail before MPI_Init (its device is opened first), where MPI_Abort is not
    // allowed: then its non-zero exit is what tells mpirun to end the job.
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized)
        MPI_Abort(MPI_COMM_WORLD, status);
}

void mpi_world_finalize(void) {
    MPI_Finalize();
}
