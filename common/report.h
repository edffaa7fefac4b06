/*
 * report.h - the files a run leaves behind with --out DIR, written as it goes.
 *
 * DIR/losses.csv holds one row per epoch (epoch, train_loss, eval_loss, seconds),
 * added and flushed at the end of each epoch, so that a run interrupted by Ctrl-C, a
 * kill or a crash keeps every epoch it finished. At the end of a run that trained,
 * DIR/fit.csv holds what the model predicts over a grid of x (x, sin_x, first_epoch,
 * trained: after epoch 1, nan where a resumed run did not see it, and after the last),
 * from forward passes on rank 0's device, and DIR/samples.csv (x, y) the first training
 * samples, so that the pictures can be redrawn from the files.
 *
 * --plot png (the default) draws DIR/loss.png (the losses, with the noise floor, over the
 * seconds of each epoch) and DIR/fit.png (data, sin(x) and the model) with gnuplot;
 * --plot terminal (or dumb) draws the loss curve as text on stdout instead, --out or not;
 * --plot none draws nothing. Without gnuplot the CSVs are still there and one warning
 * says why there is no picture; a failed plot leaves no broken picture behind.
 *
 * APIs: EpochStats, Report, REPORT_FIT_POINTS, REPORT_MAX_SAMPLES, report_prepare_dir,
 *       report_open, report_add, report_close, report_check_finite.
 */
#ifndef REPORT_H
#define REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "config.h"
#include "data.h"
#include "mlp.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    float train_loss; // mean of the epoch's batch losses
    float eval_loss;  // mean squared error over every eval sample
    double seconds;   // the epoch's training and evaluation, wall clock
} EpochStats;

#define REPORT_FIT_POINTS 201   // the grid of x in [-pi, pi] of DIR/fit.csv
#define REPORT_MAX_SAMPLES 2000 // training samples in DIR/samples.csv, at most

typedef struct {
    bool active;             // false: not rank 0, and the functions below do nothing
    const char* dir;         // NULL: no --out, no files
    PlotKind plot;           // what report_close draws
    FILE* csv;               // DIR/losses.csv, open while the run goes
    const EpochStats* stats; // every epoch's, for the terminal's plot
    int epochs_done;         // the rows of stats that are filled
    Mlp* model;              // the model whose predictions DIR/fit.csv holds
    float* first_epoch;      // (REPORT_FIT_POINTS) its predictions after epoch 1, or NULL
    char settings[160];      // "cpu, 2 ranks, batch 32, lr 0.01, adam": the plots' titles
} Report;

// Creates dir if it does not exist and proves that files can be made there. Returns 0,
// or -1 with the reason in why. Called before training, so that a bad --out fails
// before any work is done.
int report_prepare_dir(const char* dir, char* why, size_t why_len);

// Starts the report of c's run of model m on world_size ranks (c NULL: not rank 0, no
// report): with --out, DIR/losses.csv's header and the rows of the epochs_done epochs of
// stats (c->epochs of them, filled as the run goes) a resumed run has done already.
// 0, or -1 after a message.
int report_open(Report* r, const TrainConfig* c, int world_size, Mlp* m, const EpochStats* stats,
                int epochs_done);
// Adds the row of epoch (from 1) and flushes it; after epoch 1, keeps the model's
// predictions for DIR/fit.csv. 0, or -1 after a message (for good).
int report_add(Report* r, int epoch, const EpochStats* e);
// Closes the CSV; if the run trained, writes DIR/fit.csv and DIR/samples.csv (from
// data) and draws what --plot asks. 0, or -1 if a file could not be finished (a missing
// plot is only a warning).
int report_close(Report* r, const Dataset* data, bool trained);

// A run whose loss is no longer a number has diverged, and every later epoch would be
// worse: 0 if both losses of epoch (from 1) are finite, else -1 after saying so once
// (verbose: rank 0) for good, since a restart would diverge the same way.
int report_check_finite(const EpochStats* e, int epoch, bool verbose);

#ifdef __cplusplus
}
#endif

#endif
