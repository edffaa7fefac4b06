/*
 * checkpoint.c - a run and its checkpoint (see checkpoint.h).
 */
#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "file.h"
#include "trace.h"

// ----------------------------------------------------------------------------
// a run and its checkpoint

// Whether ck can go on as the run c describes; why says what differs if not.
static int check_fits(const Checkpoint* ck, const TrainConfig* c, char* why, size_t why_len) {
    if (ck->hidden != c->hidden_size)
        snprintf(why, why_len, "its model has hidden size %d, this run --hidden-size %d",
                 ck->hidden, c->hidden_size);
    else if (ck->seed != c->seed)
        snprintf(why, why_len, "it was written with --seed %" PRIu64 ", this run has %" PRIu64,
                 ck->seed, c->seed);
    else if (ck->settings_hash != checkpoint_settings_hash(c))
        snprintf(why, why_len,
                 "it was written with other settings (--batch-size, --learning-rate, "
                 "--data-size or --optimizer differ)");
    else if (ck->epochs_done > c->epochs)
        snprintf(why, why_len, "it has %d epochs done, more than --epochs %d", ck->epochs_done,
                 c->epochs);
    else
        return 0;
    return -1;
}

int checkpoint_find(const TrainConfig* c, Checkpoint* ck, char* why, size_t why_len) {
    char problem[512], path[PATH_MAX];
    struct stat st;
    memset(ck, 0, sizeof *ck);
    if (c->checkpoint_dir == NULL)
        return 0;
    // A fresh run makes the directory now, and every run proves it can write there, so
    // that a bad one fails before any training rather than at the first save.
    bool fresh = !c->resume && !c->resume_if_present;
    RETURN_IF_FAILED(checkpoint_path(path, sizeof path, c->checkpoint_dir, why, why_len));
    if (fresh && mkdir(c->checkpoint_dir, 0755) != 0 && errno != EEXIST) {
        snprintf(why, why_len, "--checkpoint-dir %s: cannot create the directory: %s",
                 c->checkpoint_dir, strerror(errno));
        return -1;
    }
    if ((fresh || stat(c->checkpoint_dir, &st) == 0) &&
        file_dir_writable(c->checkpoint_dir, problem, sizeof problem) != 0) {
        snprintf(why, why_len, "--checkpoint-dir %s", problem);
        return -1;
    }
    if (fresh && stat(path, &st) == 0) {
        snprintf(why, why_len,
                 "%s exists: add --resume to go on from it, or remove it to start over", path);
        return -1;
    }
    if (fresh)
        return 0;
    if (checkpoint_read(c->checkpoint_dir, ck, problem, sizeof problem) != 0) {
        if (errno == ENOENT && c->resume_if_present)
            return 0;
        snprintf(why, why_len, "cannot resume: %s", problem);
        return -1;
    }
    if (check_fits(ck, c, problem, sizeof problem) == 0)
        return 1;
    checkpoint_path(path, sizeof path, c->checkpoint_dir, why, why_len);
    snprintf(why, why_len, "cannot resume: %s does not fit this run: %s", path, problem);
    checkpoint_free(ck);
    return -1;
}

int checkpoint_restore(const Checkpoint* ck, const TrainConfig* c, int world_size, Mlp* m,
                       Optimizer* opt, EpochStats* stats, bool verbose) {
    RETURN_IF_FAILED(mlp_set_state(m, ck->params, ck->opt_m, ck->opt_v));
    opt->step = ck->optimizer_step;
    memcpy(stats, ck->history, (size_t)ck->epochs_done * sizeof *stats);
    if (verbose) {
        char path[PATH_MAX], why[64];
        checkpoint_path(path, sizeof path, c->checkpoint_dir, why, sizeof why);
        printf("Resuming from %s: %d of %d epochs done\n", path, ck->epochs_done, c->epochs);
        if (ck->world_size != world_size)
            printf("Resuming with world size %d from a checkpoint of world size %d: allowed at "
                   "an epoch boundary, but the global batch is now %d, not %d\n",
                   world_size, ck->world_size, world_size * c->batch_size,
                   ck->world_size * c->batch_size);
    }
    return ck->epochs_done;
}

static bool all_finite(const float* v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return false;
    return true;
}

// A write that failed for want of room or rights fails every restart the same way: the
// job ends with its cause instead. Anything else (a passing fault) may be retried.
static void write_failed(const char* why, int err) {
    if (err == ENOSPC || err == EDQUOT || err == EROFS || err == EACCES || err == EPERM ||
        err == EFBIG)
        rank_log_for_good("checkpoint: %s", why);
    else
        rank_log("checkpoint: %s", why);
}

// Writes the checkpoint after epochs_done epochs (see checkpoint_save_due).
static int save(const TrainConfig* c, int world_size, const Mlp* m, const Optimizer* opt,
                const EpochStats* stats, int epochs_done) {
    size_t P = (size_t)m->num_params;
    Checkpoint ck = {.hidden = m->hidden,
                     .num_params = m->num_params,
                     .world_size = world_size,
                     .seed = c->seed,
                     .settings_hash = checkpoint_settings_hash(c),
                     .epochs_done = epochs_done,
                     .optimizer_step = opt->step,
                     .params = malloc(P * sizeof(float)),
                     .opt_m = malloc(P * sizeof(float)),
                     .opt_v = malloc(P * sizeof(float)),
                     .history = (EpochStats*)stats};
    char why[ERROR_TEXT_BYTES] = "out of memory";
    int err = ck.params == NULL || ck.opt_m == NULL || ck.opt_v == NULL ||
              mlp_get_state(m, ck.params, ck.opt_m, ck.opt_v) != 0;
    if (!err && !all_finite(ck.params, P))
        rank_log_for_good("checkpoint: the parameters after epoch %d are not all finite numbers: "
                          "the last checkpoint stays as it was",
                          epochs_done);
    else if (!err && checkpoint_write(c->checkpoint_dir, &ck, why, sizeof why) != 0)
        write_failed(why, errno);
    else if (err)
        rank_log("checkpoint: %s", why);
    err = err || !all_finite(ck.params, P) || rank_failed_for_good();
    ck.history = NULL; // the caller's
    checkpoint_free(&ck);
    return err ? -1 : 0;
}

int checkpoint_save_due(const TrainConfig* c, int world_size, const Mlp* m, const Optimizer* opt,
                        const EpochStats* stats, int epochs_done) {
    if (c->checkpoint_dir == NULL ||
        (epochs_done % c->checkpoint_every != 0 && epochs_done != c->epochs))
        return 0;
    trace_begin(TRACE_CHECKPOINT);
    return trace_end(save(c, world_size, m, opt, stats, epochs_done));
}

int checkpoint_ranks_agree(Communicator* comm, int rank, int world_size, const Checkpoint* found) {
    // 0 for none; a file's CRC in the low half, 1 in the high half.
    uint64_t mine = found != NULL ? 1ull << 32 | found->crc : 0;
    uint64_t* hashes = malloc((size_t)world_size * sizeof *hashes);
    int differ = 0;
    if (hashes == NULL || comm_allgather_u64(comm, "checkpoints read", mine, hashes) != 0) {
        free(hashes);
        return -1;
    }
    for (int r = 1; r < world_size; r++)
        if (hashes[r] != hashes[0]) {
            differ++;
            if (rank == 0)
                rank_log("rank %d %s than rank 0: --checkpoint-dir must be one directory "
                         "that every node sees",
                         r,
                         hashes[r] == 0 || hashes[0] == 0 ? "found another checkpoint state"
                                                          : "read another checkpoint");
        }
    free(hashes);
    return differ ? -1 : 0;
}

int checkpoint_lock(const char* dir, char* why, size_t why_len) {
    char path[PATH_MAX], holder[32] = "";
    snprintf(path, sizeof path, "%s/checkpoint.lock", dir);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(why, why_len, "--checkpoint-dir %s: cannot create the directory: %s", dir,
                 strerror(errno));
        return -1;
    }
    char problem[ERROR_TEXT_BYTES];
    if (file_dir_writable(dir, problem, sizeof problem) != 0) {
        snprintf(why, why_len, "--checkpoint-dir %s", problem);
        return -1;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(why, why_len, "--checkpoint-dir %s: cannot lock it: %s", dir, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        ssize_t n = pread(fd, holder, sizeof holder - 1, 0);
        holder[n > 0 ? n : 0] = '\0';
        holder[strcspn(holder, "\n")] = '\0';
        close(fd);
        if (err == EWOULDBLOCK)
            snprintf(why, why_len,
                     "--checkpoint-dir %s is in use by another run (pid %s): wait for it to "
                     "end, or give this run another directory",
                     dir, holder[0] != '\0' ? holder : "unknown");
        else
            snprintf(why, why_len, "--checkpoint-dir %s: cannot lock it: %s", dir, strerror(err));
        return -1;
    }
    // The holder's pid, for the message of a run that finds the directory taken (only
    // that message needs it: a failure here costs nothing else).
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len)
        pid[0] = '\0';
    return fd;
}
