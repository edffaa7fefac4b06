/*
 * report.c - losses.csv and its gnuplot picture (see report.h).
 */
#include "report.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "check.h"

int report_prepare_dir(const char* dir, char* why, size_t why_len) {
    struct stat st;
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
    return 0;
}

static int write_csv(const char* dir, const EpochStats* stats, int epochs) {
    char path[4096], tmp[4096];
    snprintf(path, sizeof path, "%s/losses.csv", dir);
    snprintf(tmp, sizeof tmp, "%s/.losses.csv.tmp", dir);
    FILE* f = fopen(tmp, "w");
    if (f == NULL) {
        rank_log("error: cannot write %s: %s", tmp, strerror(errno));
        return -1;
    }
    fprintf(f, "epoch,train_loss,eval_loss,seconds\n");
    for (int e = 0; e < epochs; e++)
        fprintf(f, "%d,%.9g,%.9g,%.6f\n", e + 1, stats[e].train_loss, stats[e].eval_loss,
                stats[e].seconds);
    int failed = ferror(f);
    if (fclose(f) != 0 || failed || rename(tmp, path) != 0) {
        rank_log("error: cannot write %s: %s", path, strerror(errno));
        remove(tmp);
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
    fprintf(gp,
            "set terminal pngcairo size 800,500 noenhanced\n"
            "set output '%s/loss.png'\n"
            "set datafile separator ','\n"
            "set title 'Training and evaluation loss'\n"
            "set xlabel 'epoch'\nset ylabel 'MSE loss'\nset logscale y\nset grid\n"
            "plot '%s/losses.csv' using 1:2 skip 1 with lines lw 2 title 'train', "
            "'' using 1:3 skip 1 with lines lw 2 title 'eval'\n",
            dir, dir);
    int status = pclose(gp);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        rank_log("warning: gnuplot failed, so no %s/loss.png; %s/losses.csv has the data", dir,
                 dir);
}

int report_write(const char* dir, const EpochStats* stats, int epochs) {
    if (write_csv(dir, stats, epochs) != 0)
        return -1;
    plot_losses(dir);
    return 0;
}
