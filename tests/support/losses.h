/*
 * losses.h - reading the losses.csv that the lessons write with --out, and comparing two.
 *
 * APIs: losses_read, expect_same_losses.
 */
#ifndef TESTS_SUPPORT_LOSSES_H
#define TESTS_SUPPORT_LOSSES_H

// Reads dir/losses.csv: losses[e][0] train and losses[e][1] eval; returns the row count.
int losses_read(const char* dir, double (*losses)[2], int max);

// Both runs' losses.csv hold `epochs` epochs whose losses agree within rtol (relative);
// a failure names what, the worst epoch, both values and the difference.
void expect_same_losses(const char* what, const char* dir_a, const char* dir_b, int epochs,
                        double rtol);

#endif
