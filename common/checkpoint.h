/*
 * checkpoint.h - saving training every few epochs, and going on from it later.
 *
 * The file itself is checkpoint_file.h's. This is the run's side: whether a run
 * resumes (--resume, or a restart after a failure) or must not overwrite a
 * checkpoint (a fresh run), whether the file fits the run, putting its state into
 * the model and optimizer, saving when --checkpoint-every says, and proof that
 * every rank read the same file. Rank 0 writes; every rank reads the file itself
 * (on several nodes DIR must be a directory that every node sees). Because every
 * replica is the same, one checkpoint serves any world size, and a run resumed
 * with the same world size reproduces the uninterrupted run bit for bit on the CPU.
 *
 * The run that writes holds a lock on the directory for its whole life
 * (checkpoint_lock): a second run on the same directory is refused at its start instead
 * of clashing with the first at a save. A save that fails for want of room or rights,
 * and parameters that are no longer numbers, end the job for good (rank_log_for_good):
 * a restart would only meet them again, and the last good checkpoint stays as it was.
 *
 * APIs: checkpoint_find, checkpoint_lock, checkpoint_restore, checkpoint_save_due,
 *       checkpoint_ranks_agree.
 */
#ifndef CHECKPOINT_H
#define CHECKPOINT_H

#include <stdbool.h>

#include "checkpoint_file.h"
#include "collective.h"
#include "config.h"
#include "mlp.h"
#include "report.h"

#ifdef __cplusplus
extern "C" {
#endif

// What c->resume (or c->resume_if_present) asks of c->checkpoint_dir: 1 with ck filled when there
// is a checkpoint that fits the run c describes, 0 when the run starts from scratch, -1 with the
// reason in why (a checkpoint that does not fit, is damaged, is missing after --resume, or would be
// overwritten by a fresh run).
int checkpoint_find(const TrainConfig* c, Checkpoint* ck, char* why, size_t why_len);

// Locks dir (made if missing; DIR/checkpoint.lock, with flock), before anything else looks
// at it, for this process and the workers it forks,
// for as long as the returned descriptor stays open: the run's life. Returns it, or -1
// with the reason in why ("--checkpoint-dir DIR is in use by another run (pid N)...").
int checkpoint_lock(const char* dir, char* why, size_t why_len);

// Puts ck's state into m, opt and stats (room for c->epochs) and returns the epoch
// to start at; verbose (rank 0) says so, and says when the world size changed.
int checkpoint_restore(const Checkpoint* ck, const TrainConfig* c, int world_size, Mlp* m,
                       Optimizer* opt, EpochStats* stats, bool verbose);

// After epochs_done epochs: writes a checkpoint if --checkpoint-every says one is
// due (and always after the last epoch). Returns 0, or -1 after a message.
int checkpoint_save_due(const TrainConfig* c, int world_size, const Mlp* m, const Optimizer* opt,
                        const EpochStats* stats, int epochs_done);

// Every rank read the checkpoint on its own node: they must have read the same
// one (found, or NULL for none). Returns 0, or -1 on every rank after rank 0 names
// the ranks that differ.
int checkpoint_ranks_agree(Communicator* comm, int rank, int world_size, const Checkpoint* found);

#ifdef __cplusplus
}
#endif

#endif
