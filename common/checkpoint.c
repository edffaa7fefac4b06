/*
 * checkpoint.c - a run and its checkpoint (see checkpoint.h).
 */
#include "checkpoint.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "check.h"

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
    // A fresh run makes the directory now, so that a bad one fails before any training.
    if (!c->resume && !c->resume_if_present) {
        RETURN_IF_FAILED(checkpoint_path(path, sizeof path, c->checkpoint_dir, why, why_len));
        if (mkdir(c->checkpoint_dir, 0755) != 0 && errno != EEXIST) {
            snprintf(why, why_len, "--checkpoint-dir %s: cannot create the directory: %s",
                     c->checkpoint_dir, strerror(errno));
            return -1;
        }
        if (stat(path, &st) != 0)
            return 0;
        snprintf(why, why_len,
                 "%s exists: add --resume to go on from it, or remove it to start over", path);
        return -1;
    }
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

int checkpoint_save_due(const TrainConfig* c, int world_size, const Mlp* m, const Optimizer* opt,
                        const EpochStats* stats, int epochs_done) {
    if (c->checkpoint_dir == NULL ||
        (epochs_done % c->checkpoint_every != 0 && epochs_done != c->epochs))
        return 0;
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
    char why[512] = "out of memory";
    int err = ck.params == NULL || ck.opt_m == NULL || ck.opt_v == NULL ||
              mlp_get_state(m, ck.params, ck.opt_m, ck.opt_v) != 0 ||
              checkpoint_write(c->checkpoint_dir, &ck, why, sizeof why) != 0;
    if (err)
        rank_log("checkpoint: %s", why);
    ck.history = NULL; // the caller's
    checkpoint_free(&ck);
    return err ? -1 : 0;
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
