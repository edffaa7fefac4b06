/*
 * losses.c - losses.csv for the tests (see losses.h).
 */
#include "losses.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int losses_read(const char* dir, double (*losses)[2], int max) {
    char path[256], line[256];
    snprintf(path, sizeof path, "%s/losses.csv", dir);
    FILE* f = fopen(path, "r");
    cr_assert_not_null(f, "cannot open %s: %s", path, strerror(errno));
    cr_assert_not_null(fgets(line, sizeof line, f), "%s is empty", path);
    cr_assert_str_eq(line, "epoch,train_loss,eval_loss,seconds\n", "%s: header", path);
    int n = 0, epoch;
    double seconds;
    while (n < max && fgets(line, sizeof line, f) != NULL) {
        cr_assert_eq(sscanf(line, "%d,%lf,%lf,%lf", &epoch, &losses[n][0], &losses[n][1], &seconds),
                     4, "%s: row %d: %s", path, n + 1, line);
        cr_assert_eq(epoch, n + 1, "%s: row %d is epoch %d", path, n + 1, epoch);
        n++;
    }
    fclose(f);
    return n;
}

void expect_same_losses(const char* what, const char* dir_a, const char* dir_b, int epochs,
                        double rtol) {
    double(*la)[2] = calloc((size_t)epochs + 1, sizeof *la);
    double(*lb)[2] = calloc((size_t)epochs + 1, sizeof *lb);
    cr_assert(la != NULL && lb != NULL);
    cr_assert_eq(losses_read(dir_a, la, epochs + 1), epochs, "%s: %s has another epoch count", what,
                 dir_a);
    cr_assert_eq(losses_read(dir_b, lb, epochs + 1), epochs, "%s: %s has another epoch count", what,
                 dir_b);
    double worst_rel = 0.0;
    int worst_epoch = 0, worst_kind = 0;
    for (int e = 0; e < epochs; e++)
        for (int k = 0; k < 2; k++) {
            double rel = fabs(la[e][k] - lb[e][k]) / fabs(lb[e][k]);
            if (!(rel <= worst_rel)) // a NaN is the worst of all
                worst_rel = rel, worst_epoch = e, worst_kind = k;
        }
    const char* kind[2] = {"train", "eval"};
    cr_assert(worst_rel <= rtol,
              "%s: worst at epoch %d, %s loss %.9g against %.9g: relative difference %.3g > %.0e",
              what, worst_epoch + 1, kind[worst_kind], la[worst_epoch][worst_kind],
              lb[worst_epoch][worst_kind], worst_rel, rtol);
    free(la);
    free(lb);
}
