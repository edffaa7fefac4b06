/*
 * report.h - the files a run leaves behind with --out DIR.
 *
 * DIR/losses.csv holds one row per epoch (epoch, train_loss, eval_loss,
 * seconds); DIR/loss.png plots the two curves with gnuplot. Without gnuplot
 * the CSV is still written and a warning says why there is no picture. The
 * CSV appears whole or not at all: it is written beside and then renamed.
 *
 * APIs: EpochStats, report_prepare_dir, report_write.
 */
#ifndef REPORT_H
#define REPORT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    float train_loss; // mean of the epoch's batch losses
    float eval_loss;  // mean squared error over every eval sample
    double seconds;   // the epoch's training and evaluation, wall clock
} EpochStats;

// Creates dir if it does not exist. Returns 0, or -1 with the reason in why. Called
// before training so that a bad --out fails before any work is done.
int report_prepare_dir(const char* dir, char* why, size_t why_len);

// Writes dir/losses.csv and, with gnuplot, dir/loss.png. Returns 0, or -1 if the
// CSV could not be written (a missing plot is only a warning).
int report_write(const char* dir, const EpochStats* stats, int epochs);

#ifdef __cplusplus
}
#endif

#endif
