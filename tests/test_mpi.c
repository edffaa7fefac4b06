/*
 * test_mpi.c - lesson 03 under mpirun: MPI numbers the ranks, MPI_Allreduce averages.
 *
 * Runs `mpirun -np N build/multi_node --backend mpi` (as root, oversubscribed, as CI
 * runs) and compares its losses with lesson 02's ring at the same world size. Without
 * Open MPI, or with a build made without mpicc, every test skips and says why.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "support/losses.h"
#include "support/proc.h"

#define MULTI_NODE build_program("multi_node")
#define MULTI_GPU build_program("multi_gpu")
#define EPOCHS 3
#define EQUAL_RTOL 1e-5

static const char* const MPI_ENV[] = {"OMPI_ALLOW_RUN_AS_ROOT=1",
                                      "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1", NULL};

static char mpirun[256]; // its path, found by skip_without_mpi

// Skips the test unless mpirun exists and build/multi_node was built with MPI.
static void skip_without_mpi(void) {
    FILE* which = popen("command -v mpirun", "r");
    int found = which != NULL && fgets(mpirun, sizeof mpirun, which) != NULL;
    if (which != NULL)
        pclose(which);
    mpirun[strcspn(mpirun, "\n")] = '\0';
    if (!found || mpirun[0] != '/')
        cr_skip_test("Open MPI is not installed (mpirun not found; ./setup.sh --mpi installs it)");
    Proc p = proc_run(MULTI_NODE, (const char*[]){"--backend", "mpi", NULL}, NULL);
    int built_without = strstr(p.err.text, "this build has no MPI") != NULL;
    proc_free(&p);
    if (built_without)
        cr_skip_test("%s was built without mpicc: rebuild with Open MPI installed", MULTI_NODE);
}

static void expect_mpirun_matches_the_ring(int ranks) {
    skip_without_mpi();
    char np[8], dir_mpi[128], dir_ring[128], what[64];
    snprintf(np, sizeof np, "%d", ranks);
    snprintf(dir_mpi, sizeof dir_mpi, "%s/mpi_%d", temp_dir, ranks);
    snprintf(dir_ring, sizeof dir_ring, "%s/ring_%d", temp_dir, ranks);
    ProcOptions options = {.env = MPI_ENV};
    Proc m = proc_run(mpirun,
                      (const char*[]){"--oversubscribe", "-np", np, MULTI_NODE, "--device", "cpu",
                                      "--backend", "mpi", "--epochs", "3", "--out", dir_mpi, NULL},
                      &options);
    cr_assert_eq(m.status, 0, "mpirun -np %d: exit status %d; stderr:\n%s", ranks, m.status,
                 m.err.text);
    char agree[64];
    snprintf(agree, sizeof agree, "Replicas agree: yes (%d ranks", ranks);
    cr_assert_not_null(strstr(m.out.text, agree), "mpirun -np %d: stdout:\n%s", ranks, m.out.text);
    cr_assert_not_null(strstr(m.out.text, "Backend: mpi"), "stdout:\n%s", m.out.text);
    Proc r = proc_run(
        MULTI_GPU,
        (const char*[]){"--device", "cpu", "--gpus", np, "--epochs", "3", "--out", dir_ring, NULL},
        NULL);
    cr_assert_eq(r.status, 0, "multi_gpu: exit status %d; stderr:\n%s", r.status, r.err.text);
    snprintf(what, sizeof what, "mpirun -np %d against the ring", ranks);
    expect_same_losses(what, dir_mpi, dir_ring, EPOCHS, EQUAL_RTOL);
    proc_free(&m);
    proc_free(&r);
}

Test(mpi, two_ranks_under_mpirun_train_like_the_ring, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    expect_mpirun_matches_the_ring(2);
}

Test(mpi, three_ranks_under_mpirun_train_like_the_ring, .init = temp_dir_make,
     .fini = proc_end_leftovers) {
    expect_mpirun_matches_the_ring(3);
}

Test(mpi, a_rank_killed_under_mpirun_ends_the_job_naming_it, .fini = proc_end_leftovers) {
    skip_without_mpi();
    ProcOptions options = {.env = MPI_ENV};
    Proc m;
    proc_start(&m, mpirun,
               (const char*[]){"--oversubscribe", "-np", "2", MULTI_NODE, "--device", "cpu",
                               "--backend", "mpi", "--epochs", "100000", "--data-size", "200",
                               NULL},
               &options);
    cr_assert(proc_wait_for(&m, PROC_STDOUT, "Epoch [", 1, now_seconds() + 30),
              "no epoch line; stderr:\n%s", m.err.text);
    pid_t ranks[2];
    proc_wait_for_children(&m, ranks, 2);
    kill(ranks[1], SIGKILL);
    double killed_at = now_seconds();
    proc_finish(&m, killed_at + 30);
    cr_assert_neq(m.status, 0, "mpirun exited 0 after a rank was killed");
    cr_assert(m.exited_at - killed_at < 10.0, "mpirun took %.1f s to end the job",
              m.exited_at - killed_at);
    cr_assert(strstr(m.err.text, "rank 1") != NULL || strstr(m.out.text, "rank 1") != NULL,
              "the killed rank is not named; stderr:\n%s", m.err.text);
    expect_pids_gone(ranks, 2, 5.0, "after mpirun ended");
    proc_free(&m);
}

// Whether this machine has an NVIDIA GPU with its driver loaded.
static int gpu_present(void) {
    return access("/dev/nvidia0", F_OK) == 0 || access("/proc/driver/nvidia/gpus", F_OK) == 0;
}

// Each rank opens its GPU (by its local rank) before MPI_Init; one that cannot must end the
// job with its reason, without an MPI_Abort that MPI forbids before MPI_Init.
Test(mpi, a_rank_without_its_device_ends_the_job_before_mpi_init, .fini = proc_end_leftovers) {
    skip_without_mpi();
    if (gpu_present())
        cr_skip_test("a GPU is present: --device cuda is expected to work here");
    ProcOptions options = {.env = MPI_ENV};
    Proc m = proc_run(mpirun,
                      (const char*[]){"--oversubscribe", "-np", "2", MULTI_NODE, "--device", "cuda",
                                      "--backend", "mpi", "--epochs", "1", NULL},
                      &options);
    cr_assert_neq(m.status, 0, "mpirun exited 0 without a GPU; stdout:\n%s", m.out.text);
    cr_assert_not_null(strstr(m.err.text, "--device cuda"), "no reason; stderr:\n%s", m.err.text);
    cr_assert_null(strstr(m.err.text, "before MPI_INIT"), "MPI_Abort before MPI_Init:\n%s",
                   m.err.text);
    proc_free(&m);
}

Test(mpi, backend_mpi_without_mpirun_is_a_usage_error, .fini = proc_end_leftovers) {
    Proc p = proc_run(MULTI_NODE, (const char*[]){"--backend", "mpi", NULL}, NULL);
    cr_assert_eq(p.status, 2, "exit status %d; stderr:\n%s", p.status, p.err.text);
    cr_assert_not_null(strstr(p.err.text, "mpirun"), "stderr:\n%s", p.err.text);
    proc_free(&p);
}

// mpirun binds its ranks itself (--bind-to): lesson 03's --bind under it is refused.
Test(mpi, bind_under_mpirun_is_refused_naming_mpiruns_own, .fini = proc_end_leftovers) {
    skip_without_mpi();
    ProcOptions options = {.env = MPI_ENV};
    Proc m = proc_run(mpirun,
                      (const char*[]){"--oversubscribe", "-np", "2", MULTI_NODE, "--device", "cpu",
                                      "--backend", "mpi", "--bind", "--epochs", "1", NULL},
                      &options);
    cr_assert_neq(m.status, 0, "mpirun exited 0; stdout:\n%s", m.out.text);
    cr_assert_not_null(strstr(m.err.text, "--bind: under mpirun, mpirun binds the ranks"),
                       "stderr:\n%s", m.err.text);
    cr_assert_null(strstr(m.out.text, "Epoch ["), "it trained:\n%s", m.out.text);
    proc_free(&m);
}
