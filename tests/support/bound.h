/*
 * bound.h - reading what --bind says: every rank's "[Rank r] --bind: CPU n" line.
 *
 * APIs: expect_bound_to_distinct_cpus.
 */
#ifndef TESTS_SUPPORT_BOUND_H
#define TESTS_SUPPORT_BOUND_H

// err (a run's stderr) names a CPU for each of ranks first_rank .. first_rank + count - 1,
// and no two the same CPU; a failure names what and shows err.
void expect_bound_to_distinct_cpus(const char* what, const char* err, int first_rank, int count);

#endif
