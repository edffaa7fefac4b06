/*
 * report.c - losses.csv and its gnuplot picture (see report.h).
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

int report_open(Report* r, const char* dir, const EpochStats* stats, int epochs_done) {
    *r = (Report){.dir = dir};
    if (dir == NULL)
        return 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/losses.csv", dir);
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

int report_add(Report* r, int epoch, const EpochStats* e) {
    if (r->csv == NULL)
        return 0;
    if (e != NULL)
        csv_row(r->csv, epoch, e);
    if (fflush(r->csv) != 0 || ferror(r->csv)) {
        rank_log_for_good("error: cannot write %s/losses.csv: %s", r->dir, strerror(errno));
        return -1;
    }
    return 0;
}

// gnuplot reads the script from a pipe; its own errors reach stderr.
static void plot_losses(const char* dir) {
    // Look first: writing to the pipe of a gnuplot that is not there would raise SIGPIPE.
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        rank_log("warning: gnuplot not found (apt-get install gnuplot-nox), so no %s/loss.png; "
                 "%s/losses.csv has the data",
                 dir, dir);
        return;
    }
    FILE* gp = popen("gnuplot", "w");
    if (gp == NULL) {
        rank_log("warning: gnuplot could not be started: %s", strerror(errno));
        return;
    }
    // Drawn beside, then renamed: a gnuplot that fails half-way leaves no broken picture.
    char png[4096], tmp[4096];
    snprintf(png, sizeof png, "%s/loss.png", dir);
    snprintf(tmp, sizeof tmp, "%s/.loss.png.tmp", dir);
    fprintf(gp,
            "set terminal pngcairo size 800,500 noenhanced\n"
            "set output '%s'\n"
            "set datafile separator ','\n"
            "set title 'Training and evaluation loss'\n"
            "set xlabel 'epoch'\nset ylabel 'MSE loss'\nset logscale y\nset grid\n"
            "plot '%s/losses.csv' using 1:2 skip 1 with lines lw 2 title 'train', "
            "'' using 1:3 skip 1 with lines lw 2 title 'eval'\n",
            tmp, dir);
    int status = pclose(gp);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0 || rename(tmp, png) != 0) {
        remove(tmp);
        rank_log("warning: gnuplot failed, so no %s/loss.png; %s/losses.csv has the data", dir,
                 dir);
    }
}

int report_close(Report* r, bool plot) {
    if (r->csv == NULL)
        return 0;
    int failed = fclose(r->csv) != 0;
    r->csv = NULL;
    if (failed) {
        rank_log_for_good("error: cannot write %s/losses.csv: %s", r->dir, strerror(errno));
        return -1;
    }
    if (plot)
        plot_losses(r->dir);
    return 0;
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
