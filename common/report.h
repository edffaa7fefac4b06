/*
 * report.h - the files a run leaves behind with --out DIR, written as it goes.
 *
 * DIR/losses.csv holds one row per epoch (epoch, train_loss, eval_loss, seconds),
 * added and flushed at the end of each epoch, so that a run interrupted by Ctrl-C, a
 * kill or a crash keeps every epoch it finished. At the end DIR/loss.png plots the
 * two curves with gnuplot; without gnuplot the CSV is still there and a warning says
 * why there is no picture, and a failed plot leaves no empty picture behind.
 *
 * APIs: EpochStats, Report, report_prepare_dir, report_open, report_add, report_close,
 *       report_check_finite.
 */
#ifndef REPORT_H
#define REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    float train_loss; // mean of the epoch's batch losses
    float eval_loss;  // mean squared error over every eval sample
    double seconds;   // the epoch's training and evaluation, wall clock
} EpochStats;

typedef struct {
    const char* dir; // NULL: no --out, and the functions below do nothing
    FILE* csv;       // DIR/losses.csv, open while the run goes
} Report;

// Creates dir if it does not exist and proves that files can be made there. Returns 0,
// or -1 with the reason in why. Called before training, so that a bad --out fails
// before any work is done.
int report_prepare_dir(const char* dir, char* why, size_t why_len);

// Starts dir/losses.csv (dir NULL: no report): its header and the rows of the
// epochs_done epochs of stats a resumed run has done already. 0, or -1 after a message.
int report_open(Report* r, const char* dir, const EpochStats* stats, int epochs_done);
// Adds the row of epoch (from 1) and flushes it. 0, or -1 after a message (for good).
int report_add(Report* r, int epoch, const EpochStats* e);
// Closes the CSV; with plot, draws dir/loss.png. 0, or -1 if the CSV could not be
// finished (a missing plot is only a warning).
int report_close(Report* r, bool plot);

// A run whose loss is no longer a number has diverged, and every later epoch would be
// worse: 0 if both losses of epoch (from 1) are finite, else -1 after saying so once
// (verbose: rank 0) for good, since a restart would diverge the same way.
int report_check_finite(const EpochStats* e, int epoch, bool verbose);

#ifdef __cplusplus
}
#endif

#endif
