/*
 * report.c - losses.csv, fit.csv and their gnuplot pictures (see report.h).
 */
#include "report.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "check.h"
#include "file.h"

// The mean squared error of a model that predicts sin(x) exactly: the noise's variance.
#define NOISE_FLOOR (DATA_NOISE_STDDEV * DATA_NOISE_STDDEV)

int report_prepare_dir(const char* dir, char* why, size_t why_len) {
    struct stat st;
    char problem[ERROR_TEXT_BYTES];
    if (strpbrk(dir, "'\n") != NULL) { // gnuplot's script quotes the path with '
        snprintf(why, why_len, "--out %s: the name may not contain ' or a newline", dir);
        return -1;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(why, why_len, "--out %s: cannot create the directory: %s", dir, strerror(errno));
        return -1;
    }
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(why, why_len, "--out %s: not a directory", dir);
        return -1;
    }
    if (file_dir_writable(dir, problem, sizeof problem) != 0) {
        snprintf(why, why_len, "--out %s", problem);
        return -1;
    }
    return 0;
}

static void csv_row(FILE* f, int epoch, const EpochStats* e) {
    fprintf(f, "%d,%.9g,%.9g,%.6f\n", epoch, e->train_loss, e->eval_loss, e->seconds);
}

int report_open(Report* r, const TrainConfig* c, int world_size, Mlp* m, const EpochStats* stats,
                int epochs_done) {
    if (c == NULL) {
        *r = (Report){.active = false};
        return 0;
    }
    *r = (Report){.active = true,
                  .dir = c->out_dir,
                  .plot = c->plot == PLOT_DUMB ? PLOT_TERMINAL : c->plot,
                  .stats = stats,
                  .epochs_done = epochs_done,
                  .model = m};
    snprintf(r->settings, sizeof r->settings, "%s, %d rank%s, batch %d, lr %g, %s", m->k->name,
             world_size, world_size > 1 ? "s" : "", c->batch_size, c->learning_rate,
             c->optimizer == OPTIMIZER_SGD ? "sgd" : "adam");
    if (r->dir == NULL)
        return 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/losses.csv", r->dir);
    r->csv = fopen(path, "w");
    if (r->csv == NULL) {
        rank_log_for_good("error: cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    fprintf(r->csv, "epoch,train_loss,eval_loss,seconds\n");
    for (int e = 0; e < epochs_done; e++)
        csv_row(r->csv, e + 1, &stats[e]);
    return report_add(r, 0, NULL); // flushes what a resumed run brings
}

// x of point i of fit.csv's grid.
static float grid_x(int i) {
    return (float)(-M_PI + 2.0 * M_PI * i / (REPORT_FIT_POINTS - 1));
}

// predictions (REPORT_FIT_POINTS) = the model over the grid. 0, or -1 after a message.
static int predict_grid(Report* r, float* predictions) {
    float x[REPORT_FIT_POINTS];
    for (int i = 0; i < REPORT_FIT_POINTS; i++)
        x[i] = grid_x(i);
    if (mlp_predict(r->model, predictions, x, REPORT_FIT_POINTS) != 0) {
        rank_log_for_good("error: the model's predictions for %s/fit.csv failed", r->dir);
        return -1;
    }
    return 0;
}

int report_add(Report* r, int epoch, const EpochStats* e) {
    if (e != NULL)
        r->epochs_done = epoch;
    if (r->csv == NULL)
        return 0;
    if (e != NULL)
        csv_row(r->csv, epoch, e);
    if (fflush(r->csv) != 0 || ferror(r->csv)) {
        rank_log_for_good("error: cannot write %s/losses.csv: %s", r->dir, strerror(errno));
        return -1;
    }
    if (epoch != 1)
        return 0;
    r->first_epoch = malloc(REPORT_FIT_POINTS * sizeof(float));
    if (r->first_epoch == NULL) {
        rank_log_for_good("error: out of memory for %s/fit.csv", r->dir);
        return -1;
    }
    return predict_grid(r, r->first_epoch);
}

// ----------------------------------------------------------------------------
// fit.csv and samples.csv

// Writes dir/name with header and the rows that row prints; 0, or -1 after a message.
static int write_csv(const Report* r, const char* name, const char* header, int rows,
                     void (*row)(FILE* f, const void* ctx, int i), const void* ctx) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", r->dir, name);
    FILE* f = fopen(path, "w");
    bool failed = f == NULL;
    if (!failed) {
        fprintf(f, "%s\n", header);
        for (int i = 0; i < rows; i++)
            row(f, ctx, i);
        failed = ferror(f) != 0;
        failed = fclose(f) != 0 || failed; // closed in any case
    }
    if (failed) {
        rank_log_for_good("error: cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

typedef struct {
    const float* first_epoch; // NULL: a resumed run did not see epoch 1
    const float* trained;
} FitRows;

static void fit_row(FILE* f, const void* ctx, int i) {
    const FitRows* fit = ctx;
    fprintf(f, "%.6f,%.6f,%.6f,%.6f\n", grid_x(i), sin(grid_x(i)),
            fit->first_epoch != NULL ? fit->first_epoch[i] : NAN, fit->trained[i]);
}

static void sample_row(FILE* f, const void* ctx, int i) {
    const Dataset* data = ctx;
    fprintf(f, "%.6f,%.6f\n", data->x[i], data->y[i]);
}

// The trained model over the grid, and the data it learned from. 0, or -1.
static int write_fit(Report* r, const Dataset* data) {
    float trained[REPORT_FIT_POINTS];
    RETURN_IF_FAILED(predict_grid(r, trained));
    FitRows fit = {r->first_epoch, trained};
    RETURN_IF_FAILED(
        write_csv(r, "fit.csv", "x,sin_x,first_epoch,trained", REPORT_FIT_POINTS, fit_row, &fit));
    int samples = data->n_train < REPORT_MAX_SAMPLES ? data->n_train : REPORT_MAX_SAMPLES;
    return write_csv(r, "samples.csv", "x,y", samples, sample_row, data);
}

// ----------------------------------------------------------------------------
// the pictures

// gnuplot, ready for a script on its stdin, or NULL after a warning that says there is
// no `what`. Looks first: writing to the pipe of a missing gnuplot would raise SIGPIPE.
static FILE* gnuplot_start(const char* what) {
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        rank_log("warning: gnuplot not found (apt-get install gnuplot-nox), so no %s", what);
        return NULL;
    }
    fflush(stdout); // a text plot comes after what the run printed
    FILE* gp = popen("gnuplot", "w");
    if (gp == NULL)
        rank_log("warning: gnuplot could not be started: %s", strerror(errno));
    return gp;
}

// Waits for gnuplot to draw what it was given; 0 if it succeeded.
static int gnuplot_finish(FILE* gp) {
    int status = pclose(gp);
    return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

// y tick labels a log scale shows at 1, 2, 3 and 5 of each decade (gnuplot's own: 1 only).
#define LOSS_TICS                                                                                  \
    "set ytics ('0.001' 0.001, '0.002' 0.002, '0.003' 0.003, '0.005' 0.005, '0.01' 0.01, "         \
    "'0.02' 0.02, '0.03' 0.03, '0.05' 0.05, '0.1' 0.1, '0.2' 0.2, '0.3' 0.3, '0.5' 0.5, '1' 1, "   \
    "'2' 2, '3' 3, '5' 5, '10' 10, '100' 100)\n"

// The last epoch on the x axis: at least 2, so that one epoch still has an axis.
static int last_epoch(const Report* r) {
    return r->epochs_done > 2 ? r->epochs_done : 2;
}

// A step for about four tick labels from 0 to top: 1, 2 or 5 times a power of ten.
static double tic_step(double top) {
    double step = pow(10.0, floor(log10(top > 0 ? top / 4 : 1e-6)));
    return top / step > 20 ? 5 * step : top / step > 8 ? 2 * step : step;
}

// loss.png: the two losses over the noise floor, and the seconds of each epoch below.
static void loss_script(FILE* gp, const Report* r, const char* output) {
    double noise = NOISE_FLOOR, slowest = 0.0;
    for (int e = 0; e < r->epochs_done; e++)
        slowest = r->stats[e].seconds > slowest ? r->stats[e].seconds : slowest;
    fprintf(gp,
            "set terminal pngcairo size 900,700 noenhanced\nset output '%s'\n"
            "set datafile separator ','\nset grid\nset xrange [1:%d]\n"
            "set multiplot title 'Loss: %s'\n"
            "set origin 0,0.32\nset size 1,0.66\nset lmargin 10\n"
            "set ylabel 'MSE loss'\nset logscale y\nset yrange [%g:*]\n" LOSS_TICS
            "set label 1 'noise floor: %g, the variance of the noise in the data' at graph "
            "0.02, first %g offset 0,-0.8 textcolor rgb 'gray30'\n"
            "plot '%s/losses.csv' using 1:2 skip 1 with lines lw 2 title 'train', "
            "'' using 1:3 skip 1 with lines lw 2 title 'eval', "
            "%g with lines dt 2 lw 2 lc rgb 'gray30' title 'noise floor'\n"
            "unset label 1\nunset logscale y\nunset key\nset yrange [0:%g]\nset ytics %g\n"
            "set origin 0,0\nset size 1,0.32\nset xlabel 'epoch'\n"
            "set ylabel 'seconds per epoch'\n"
            "plot '' using 1:4 skip 1 with linespoints pt 7 ps 0.5 lw 1\nunset multiplot\n",
            output, last_epoch(r), r->settings, noise * 0.7, noise, noise, r->dir, noise,
            slowest * 1.15, tic_step(slowest * 1.15));
}

// fit.png: the training data, sin(x), and the model after epoch 1 (faint) and at the end.
static void fit_script(FILE* gp, const Report* r, const char* output) {
    fprintf(gp,
            "set terminal pngcairo size 900,550 noenhanced\nset output '%s'\n"
            "set datafile separator ','\nset grid\nset key top left\nset xrange [-pi:pi]\n"
            "set title 'What the model learned: %s, %d epochs'\nset xlabel 'x'\n"
            "set ylabel 'y'\n"
            "plot '%s/samples.csv' using 1:2 skip 1 with points pt 7 ps 0.3 lc rgb '#b8b8b8' "
            "title 'training data: sin(x) + noise', "
            "'%s/fit.csv' using 1:2 skip 1 with lines lw 2 lc rgb 'black' title 'sin(x)', ",
            output, r->settings, r->epochs_done, r->dir, r->dir);
    if (r->first_epoch != NULL)
        fprintf(gp, "'' using 1:3 skip 1 with lines lw 2 lc rgb '#9ecae1' title 'model after "
                    "epoch 1', ");
    fprintf(gp,
            "'' using 1:4 skip 1 with lines lw 3 lc rgb '#d62728' title 'model after epoch "
            "%d'\n",
            r->epochs_done);
}

// Draws dir/name with script; 0, or -1 after a warning. Drawn beside, then renamed: a
// gnuplot that fails half-way leaves no broken picture.
static int draw_png(const Report* r, const char* name,
                    void (*script)(FILE*, const Report*, const char*)) {
    char png[4096], tmp[4096];
    snprintf(png, sizeof png, "%s/%s", r->dir, name);
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", r->dir, name);
    FILE* gp = gnuplot_start(png);
    if (gp == NULL)
        return -1;
    script(gp, r, tmp);
    if (gnuplot_finish(gp) != 0 || rename(tmp, png) != 0) {
        remove(tmp);
        rank_log("warning: gnuplot failed, so no %s; the CSV files in %s have the data", png,
                 r->dir);
        return -1;
    }
    return 0;
}

// The loss curve as text on stdout, from the stats in memory: no --out needed.
static void draw_terminal(const Report* r) {
    FILE* gp = gnuplot_start("plot in the terminal");
    if (gp == NULL)
        return;
    fprintf(gp,
            "set terminal dumb size 79,24 noenhanced\nset title 'Loss: %s'\n"
            "set xlabel 'epoch'\nset xrange [1:%d]\nset logscale y\nset yrange [%g:*]\n"
            "set format y '%%g'\n$loss << EOD\n",
            r->settings, last_epoch(r), 0.7 * NOISE_FLOOR);
    for (int e = 0; e < r->epochs_done; e++)
        fprintf(gp, "%d %.9g %.9g\n", e + 1, r->stats[e].train_loss, r->stats[e].eval_loss);
    fprintf(gp,
            "EOD\nplot $loss using 1:2 with lines title 'train', $loss using 1:3 with lines "
            "title 'eval', %g with lines title 'noise floor'\n",
            NOISE_FLOOR);
    if (gnuplot_finish(gp) != 0)
        rank_log("warning: gnuplot failed, so no plot in the terminal");
}

int report_close(Report* r, const Dataset* data, bool trained) {
    if (!r->active)
        return 0;
    int failed = r->csv != NULL && fclose(r->csv) != 0;
    r->csv = NULL;
    if (failed)
        rank_log_for_good("error: cannot write %s/losses.csv: %s", r->dir, strerror(errno));
    else if (trained && r->dir != NULL)
        failed = write_fit(r, data) != 0;
    if (!failed && trained && r->plot == PLOT_PNG && r->dir != NULL &&
        draw_png(r, "loss.png", loss_script) == 0)
        draw_png(r, "fit.png", fit_script); // after a failure, a second would fail alike
    if (!failed && trained && r->plot == PLOT_TERMINAL)
        draw_terminal(r);
    free(r->first_epoch);
    r->first_epoch = NULL;
    return failed ? -1 : 0;
}

int report_check_finite(const EpochStats* e, int epoch, bool verbose) {
    if (isfinite(e->train_loss) && isfinite(e->eval_loss))
        return 0;
    if (verbose)
        rank_log_for_good("error: the training diverged in epoch %d (train loss %g, eval loss "
                          "%g): it stops here, and no checkpoint of it is saved; try a smaller "
                          "--learning-rate",
                          epoch, e->train_loss, e->eval_loss);
    else
        rank_log_for_good("the training diverged in epoch %d", epoch);
    return -1;
}
