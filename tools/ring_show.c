/*
 * ring_show.c - every rank's buffer after each step of a real ring all-reduce (see ring_show.h).
 */
#include "ring_show.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "check.h"
#include "timer.h"

// The rows of a show: the start, then N - 1 steps of each phase.
#define MAX_ROWS (1 + 2 * (RING_SHOW_MAX_RANKS - 1))

// What every rank writes and rank 0 prints: one row per step, one line per rank.
typedef struct {
    atomic_int filled[MAX_ROWS]; // how many ranks wrote the row
    char phase[MAX_ROWS][16];    // "start", "reduce-scatter", "all-gather"
    int step[MAX_ROWS];
    int sent[MAX_ROWS][RING_SHOW_MAX_RANKS];     // chunk sent to the right; -1 at the start
    int received[MAX_ROWS][RING_SHOW_MAX_RANKS]; // chunk received from the left
    float values[MAX_ROWS][RING_SHOW_MAX_RANKS][RING_SHOW_MAX_COUNT];
} Board;

struct RingShow {
    Board* board; // shared by every rank (MAP_SHARED, made before the fork)
    int ranks, count, slow_ms;
    double timeout_s;
    // this rank's own, after the fork
    int rank;
    int row;   // the next row it writes
    bool lost; // rank 0 waited in vain for a rank: it prints no more
};

RingShow* ring_show_create(int ranks, int count, int slow_ms, double timeout_s) {
    RingShow* s = calloc(1, sizeof *s);
    Board* board =
        mmap(NULL, sizeof *board, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s == NULL || board == MAP_FAILED) {
        rank_log("allreduce_bench --show: out of memory");
        free(s);
        return NULL;
    }
    for (int row = 0; row < MAX_ROWS; row++)
        atomic_init(&board->filled[row], 0);
    *s = (RingShow){
        .board = board, .ranks = ranks, .count = count, .slow_ms = slow_ms, .timeout_s = timeout_s};
    return s;
}

void ring_show_free(RingShow* s) {
    if (s == NULL)
        return;
    munmap(s->board, sizeof *s->board);
    free(s);
}

// ----------------------------------------------------------------------------
// the values

// 10^rank: the place of rank's digit in every sum.
static float digit_place(int rank) {
    float place = 1.0f;
    for (int r = 0; r < rank; r++)
        place *= 10.0f;
    return place;
}

// Element i of rank's buffer before the all-reduce.
static float start_value(int rank, int i) {
    return (float)(i % 9 + 1) * digit_place(rank);
}

// Element i of the sum over ranks ranks: every digit (i % 9 + 1).
static float sum_value(int ranks, int i) {
    return (float)(i % 9 + 1) * ((digit_place(ranks) - 1.0f) / 9.0f);
}

// ----------------------------------------------------------------------------
// printing (rank 0)

static void print_header(const RingShow* s) {
    printf("The ring all-reduce of %d floats on %d ranks: element i of rank r starts as\n"
           "(i %% 9 + 1) x 10^r, so each digit of a sum is one rank's share. [ ] marks the chunk\n"
           "that each rank has just received (added to its own in the reduce-scatter, copied\n"
           "over it in the all-gather).\n",
           s->count, s->ranks);
}

// The line of rank in row: its buffer, chunk by chunk.
static void print_rank_line(const RingShow* s, int row, int rank) {
    const Board* b = s->board;
    printf("    rank %d ", rank);
    for (int c = 0; c < s->ranks; c++) {
        bool received = b->received[row][rank] == c;
        printf("%s%s", c > 0 ? " |" : "", received ? " [" : "  ");
        size_t end = comm_ring_chunk_begin((size_t)s->count, s->ranks, c + 1);
        for (size_t i = comm_ring_chunk_begin((size_t)s->count, s->ranks, c); i < end; i++)
            printf("%s%*.0f", i > comm_ring_chunk_begin((size_t)s->count, s->ranks, c) ? " " : "",
                   s->ranks, (double)b->values[row][rank][i]);
        printf("%s", received ? "]" : c + 1 < s->ranks ? " " : "");
    }
    printf("\n");
}

// The row's title (what went where), then every rank's line.
static void print_row(const RingShow* s, int row) {
    const Board* b = s->board;
    if (row == 0) {
        printf("\nstart\n");
    } else {
        printf("\n%s step %d:", b->phase[row], b->step[row]);
        for (int r = 0; r < s->ranks; r++)
            printf("%s %d->%d chunk %d", r > 0 ? "," : "", r, (r + 1) % s->ranks, b->sent[row][r]);
        printf(" (the receivers %s)\n", strcmp(b->phase[row], "all-gather") == 0 ? "copy" : "add");
    }
    for (int r = 0; r < s->ranks; r++)
        print_rank_line(s, row, r);
    fflush(stdout);
}

static void sleep_ms(int ms) {
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0) // a signal cut it short: sleep the rest
        ;
}

// Waits until every rank wrote row, with the show's deadline; false if one never did.
static bool wait_for_row(const RingShow* s, int row) {
    double deadline = timer_seconds() + s->timeout_s;
    while (atomic_load(&s->board->filled[row]) < s->ranks) {
        if (timer_seconds() > deadline)
            return false;
        sleep_ms(1);
    }
    return true;
}

// ----------------------------------------------------------------------------
// each rank

// Writes this rank's line of the next row; rank 0 prints the row once all have; then all pause.
static void record(RingShow* s, const char* phase, int step, int sent, int received,
                   const float* data) {
    Board* b = s->board;
    int row = s->row++;
    if (row >= MAX_ROWS)
        return;
    if (s->rank == 0) {
        snprintf(b->phase[row], sizeof b->phase[row], "%s", phase);
        b->step[row] = step;
    }
    b->sent[row][s->rank] = sent;
    b->received[row][s->rank] = received;
    memcpy(b->values[row][s->rank], data, (size_t)s->count * sizeof(float));
    atomic_fetch_add(&b->filled[row], 1); // after the values, which rank 0 reads once it counts
    if (s->rank == 0 && !s->lost) {
        s->lost = !wait_for_row(s, row); // the all-reduce fails too, and says why
        if (!s->lost)
            print_row(s, row);
    }
    sleep_ms(s->slow_ms);
}

// The ring's step hook.
static void on_ring_step(void* ctx, const RingStep* step) {
    record(ctx, step->phase, step->step, step->sent_chunk, step->received_chunk, step->data);
}

// Whether buf holds the sum at every element; else says where it does not.
static bool holds_the_sum(const RingShow* s, const float* buf, int rank) {
    for (int i = 0; i < s->count; i++)
        if (buf[i] != sum_value(s->ranks, i)) {
            rank_log("error: rank %d holds %.0f at element %d after the all-reduce, want %.0f",
                     rank, (double)buf[i], i, (double)sum_value(s->ranks, i));
            return false;
        }
    return true;
}

int ring_show_run(RingShow* s, Communicator* comm, int rank) {
    float buf[RING_SHOW_MAX_COUNT];
    s->rank = rank;
    for (int i = 0; i < s->count; i++)
        buf[i] = start_value(rank, i);
    if (rank == 0)
        print_header(s);
    record(s, "start", 0, -1, -1, buf);
    comm_set_ring_step_hook(comm, on_ring_step, s);
    int err = comm_allreduce_sum(comm, buf, (size_t)s->count, COMM_ONCE("show"));
    comm_set_ring_step_hook(comm, NULL, NULL);
    if (err != 0 || !holds_the_sum(s, buf, rank))
        return -1;
    if (rank == 0 && !s->lost) {
        for (int r = 0; r < s->ranks; r++)
            if (!holds_the_sum(s, s->board->values[s->row - 1][r], r))
                return -1;
        printf("\nevery rank holds the sum: each digit counts all %d ranks\n", s->ranks);
    }
    return 0;
}
