/*
 * checkpoint.h - saving training to a file, and going on from it later.
 *
 * A checkpoint is everything the next epoch needs: the parameters, the
 * optimizer's state (Adam's moments or SGD's velocity, and its step count) and
 * the epoch to go on at - plus the losses so far, so that a resumed run's
 * losses.csv is whole. The data and the shuffle need nothing: they follow from
 * (seed, epoch). So a run resumed with the same world size reproduces the
 * uninterrupted run bit for bit on the CPU, and, because every replica is the
 * same, one checkpoint serves any world size.
 *
 * Rank 0 writes DIR/checkpoint.bin atomically: into a temporary file, fsync,
 * rename over the old one, fsync of the directory. A process killed at any
 * moment leaves the previous checkpoint whole. Every rank reads the file itself
 * (on several nodes DIR must be a directory that every node sees), and loading
 * checks everything before using anything.
 *
 * File format (integers little-endian, floats as their IEEE-754 bits):
 *     "DDPCKPT\0" | u32 version | u32 hidden | u32 num_params | u32 world_size |
 *     u64 seed | u32 settings_hash | u32 epochs_done | u64 optimizer_step |
 *     params, opt_m, opt_v (num_params f32 each) |
 *     epochs_done x (f32 train_loss, f32 eval_loss, f64 seconds) | u32 CRC-32 of all before
 *
 * APIs: Checkpoint, CHECKPOINT_FILE, checkpoint_settings_hash, checkpoint_encode,
 *       checkpoint_decode, checkpoint_write, checkpoint_read, checkpoint_free,
 *       checkpoint_find, checkpoint_restore, checkpoint_save_due, checkpoint_ranks_agree.
 */
#ifndef CHECKPOINT_H
#define CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "collective.h"
#include "config.h"
#include "mlp.h"
#include "report.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CHECKPOINT_FILE "checkpoint.bin"
#define CHECKPOINT_VERSION 2 // 2: the settings hash covers config_settings

typedef struct {
    int hidden;             // the model's shape: H
    int num_params;         // mlp_num_params(hidden)
    int world_size;         // ranks of the run that wrote it
    uint64_t seed;          // --seed
    uint32_t settings_hash; // checkpoint_settings_hash of the run that wrote it
    int epochs_done;        // training goes on at this epoch
    int optimizer_step;     // updates done so far
    float* params;          // (num_params)
    float* opt_m;           // (num_params) Adam's first moment, or SGD's velocity
    float* opt_v;           // (num_params) Adam's second moment
    EpochStats* history;    // (epochs_done) every epoch's losses so far
    uint32_t crc;           // the file's CRC-32: ranks compare it
} Checkpoint;

// A hash of the flags that decide the training's path (config_settings: --batch-size,
// --learning-rate, --data-size, --optimizer, and the model's shape and seed, which
// checkpoint_find compares on their own first, to name them).
uint32_t checkpoint_settings_hash(const TrainConfig* c);

// The file's bytes for ck (malloc'd, *len of them), or NULL if memory runs out.
unsigned char* checkpoint_encode(const Checkpoint* ck, size_t* len);
// Fills ck (allocating its arrays) from a file's bytes, after checking all of them.
// Returns 0, or -1 with the problem in why ("truncated: ...", "corrupted: ...").
int checkpoint_decode(Checkpoint* ck, const unsigned char* bytes, size_t len, char* why,
                      size_t why_len);
// Writes dir/CHECKPOINT_FILE atomically (dir exists). Returns 0, or -1 with the reason in why.
int checkpoint_write(const char* dir, const Checkpoint* ck, char* why, size_t why_len);
// Reads and decodes dir/CHECKPOINT_FILE. Returns 0, or -1 with the reason in why
// (errno is ENOENT when the file is not there).
int checkpoint_read(const char* dir, Checkpoint* ck, char* why, size_t why_len);
void checkpoint_free(Checkpoint* ck);

// What c->resume (or c->resume_if_present) asks of c->checkpoint_dir: 1 with ck filled when there
// is a checkpoint that fits the run c describes, 0 when the run starts from scratch, -1 with the
// reason in why (a checkpoint that does not fit, is damaged, is missing after --resume, or would be
// overwritten by a fresh run).
int checkpoint_find(const TrainConfig* c, Checkpoint* ck, char* why, size_t why_len);

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
