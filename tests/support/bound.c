/*
 * bound.c - reading what --bind says (see bound.h).
 */
#include "bound.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BOUND 64

void expect_bound_to_distinct_cpus(const char* what, const char* err, int first_rank, int count) {
    cr_assert_leq(count, MAX_BOUND, "%s: %d ranks is more than this check reads", what, count);
    int cpu[MAX_BOUND];
    for (int i = 0; i < count; i++) {
        char said[48];
        snprintf(said, sizeof said, "[Rank %d] --bind: CPU ", first_rank + i);
        const char* at = strstr(err, said);
        cr_assert_not_null(at, "%s: rank %d named no CPU:\n%s", what, first_rank + i, err);
        cpu[i] = atoi(at + strlen(said));
        for (int j = 0; j < i; j++)
            cr_assert_neq(cpu[j], cpu[i], "%s: ranks %d and %d both on CPU %d:\n%s", what,
                          first_rank + j, first_rank + i, cpu[i], err);
    }
}
