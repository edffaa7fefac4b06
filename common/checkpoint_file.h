/*
 * checkpoint_file.h - the checkpoint file: its format, atomic writes, checked reads.
 *
 * A checkpoint is everything the next epoch needs: the parameters, the
 * optimizer's state (Adam's moments or SGD's velocity, and its step count) and
 * the epoch to go on at - plus the losses so far, so that a resumed run's
 * losses.csv is whole. The data and the shuffle need nothing: they follow from
 * (seed, epoch).
 *
 * A file is written atomically: into a temporary file, fsync, rename over the
 * old one, fsync of the directory, so that a process killed at any moment leaves
 * the previous checkpoint whole. Reading checks everything before using anything:
 * this is the code that the fuzzer (tests/fuzz/fuzz_checkpoint.c) feeds any bytes.
 *
 * File format (integers little-endian, floats as their IEEE-754 bits):
 *     "DDPCKPT\0" | u32 version | u32 hidden | u32 num_params | u32 world_size |
 *     u64 seed | u32 settings_hash | u32 epochs_done | u64 optimizer_step |
 *     params, opt_m, opt_v (num_params f32 each) |
 *     epochs_done x (f32 train_loss, f32 eval_loss, f64 seconds) | u32 CRC-32 of all before
 *
 * APIs: Checkpoint, CHECKPOINT_FILE, CHECKPOINT_VERSION, checkpoint_settings_hash,
 *       checkpoint_encode, checkpoint_decode, checkpoint_path, checkpoint_write,
 *       checkpoint_read, checkpoint_free.
 */
#ifndef CHECKPOINT_FILE_H
#define CHECKPOINT_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
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
// dir/CHECKPOINT_FILE into path (len bytes), with one '/' whether or not dir ends with
// one. Returns 0, or -1 with the reason in why (a path too long).
int checkpoint_path(char* path, size_t len, const char* dir, char* why, size_t why_len);
// Writes dir/CHECKPOINT_FILE atomically (dir exists). Returns 0, or -1 with the reason in why
// and errno set (ENOSPC: the disk is full); the temporary file of a failed write is removed.
int checkpoint_write(const char* dir, const Checkpoint* ck, char* why, size_t why_len);
// Reads and decodes dir/CHECKPOINT_FILE. Returns 0, or -1 with the reason in why
// (errno is ENOENT when the file is not there).
int checkpoint_read(const char* dir, Checkpoint* ck, char* why, size_t why_len);
void checkpoint_free(Checkpoint* ck);

#ifdef __cplusplus
}
#endif

#endif
