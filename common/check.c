/*
 * check.c - the reporting half of check.h.
 */
#include "check.h"

#include <stdio.h>

static int check_rank = -1;

void check_set_rank(int rank) { check_rank = rank; }

void check_report(const char* file, int line, const char* expr, const char* reason) {
    if (check_rank >= 0)
        fprintf(stderr, "[Rank %d] %s:%d: %s: %s\n", check_rank, file, line, expr, reason);
    else
        fprintf(stderr, "%s:%d: %s: %s\n", file, line, expr, reason);
}
