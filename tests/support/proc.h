/*
 * proc.h - the test suites' way to run a program as a child process, as a user runs it.
 *
 * Every run gets a process group of its own, stdin from /dev/null, default signal
 * dispositions, and the test's death as its own (PR_SET_PDEATHSIG). Its stdout and stderr
 * are captured: through pipes that are read for every running program at once, so that
 * none blocks on a full pipe, or into files in the test's temporary directory, for a
 * script whose background children write on after it exited. A run still going at its
 * deadline is killed with its whole group; proc_end_leftovers, the .fini of a test, kills
 * the group of every run the test started, so that a failed assertion leaves nothing
 * behind. Tests find a run's workers (and what is left of its group) through /proc.
 *
 * A test may also fork a function of its own (a node, a rank, a writer to kill): fork_child
 * gives it the same death and leftover handling, reap_child waits for it with a deadline.
 *
 * APIs: Proc, ProcOptions, PROC_DEADLINE_S, PROC_MAX_ARGS, now_seconds,
 *       proc_start, proc_wait_for, proc_finish, proc_kill, proc_free, proc_run,
 *       proc_expect_ended, proc_end_leftovers, fork_child, reap_child,
 *       read_pid_file, pids_where, pid_runs, proc_wait_for_children, expect_pids_gone,
 *       proc_expect_group_gone,
 *       temp_dir, temp_dir_make, remove_tree, read_file, write_file, split_lines,
 *       port_for_test, build_program.
 */
#ifndef TESTS_SUPPORT_PROC_H
#define TESTS_SUPPORT_PROC_H

#include <stddef.h>
#include <sys/types.h>

// A run still going after this is killed with its group and fails its test.
#define PROC_DEADLINE_S 60.0
// The most arguments a program gets.
#define PROC_MAX_ARGS 32
// The streams of a run, for proc_wait_for.
#define PROC_STDOUT 0
#define PROC_STDERR 1

// ----------------------------------------------------------------------------
// running a program with a deadline

typedef struct {
    char* text; // NUL-terminated
    size_t len, cap;
} Buffer;

typedef struct {
    char name[32];   // for messages: ProcOptions.name, or the program
    pid_t pid;       // also its process group
    int fds[2];      // where its stdout and stderr are read (-1 once a pipe ended)
    int to_files;    // fds are files in temp_dir, not pipes
    Buffer out, err; // everything it wrote so far
    int reaped;
    int wstatus;       // from waitpid, once reaped
    int status;        // once reaped: its exit status, 128 + signal, or -1 when timed out
    int timed_out;     // killed at its deadline
    double started_at; // now_seconds() values
    double exited_at;
} Proc;

typedef struct {
    const char* name;             // for messages and output files; NULL: the program
    const char* const* env;       // "KEY=value" added to its environment; NULL-terminated
    const char* const* unset_env; // names removed from its environment first; NULL-terminated
    // stdout and stderr to temp_dir/NAME.out and NAME.err, not pipes: for a script whose
    // children write on after it ended. Needs temp_dir_make and a name without '/'.
    int output_to_files;
} ProcOptions;

// Monotonic seconds: common/timer.h's clock, the one every process of a test shares.
double now_seconds(void);

// Starts program with args (NULL-terminated, without the program); options may be NULL.
// p must stay where it is until proc_finish or proc_kill.
void proc_start(Proc* p, const char* program, const char* const* args, const ProcOptions* options);
// Reads every run's output until text appears count times on p's stream (PROC_STDOUT,
// PROC_STDERR); 0 if p ended or the deadline came first.
int proc_wait_for(Proc* p, int stream, const char* text, int count, double deadline);
// Reads every run's output until p has exited (killed with its group at deadline) and its
// pipes are closed; output held open by a leftover child is read for a second only.
void proc_finish(Proc* p, double deadline);
// Kills p's whole group now and finishes it.
void proc_kill(Proc* p);
void proc_free(Proc* p);
// Asserts that p ended by itself before its deadline, and that it could be executed.
void proc_expect_ended(const Proc* p);
// Runs program to its end or PROC_DEADLINE_S, then proc_expect_ended.
Proc proc_run(const char* program, const char* const* args, const ProcOptions* options);
// .fini of a test: kills the group of every run it started (and reaps those not finished),
// then removes temp_dir if it made one.
void proc_end_leftovers(void);

// ----------------------------------------------------------------------------
// forking a function of the test

// Forks (after fflush) a child that runs as a piece of the test: in a process group of its
// own, killed when the test dies, and by proc_end_leftovers if the test ends before
// reap_child. Returns 0 in the child, its pid in the test.
pid_t fork_child(void);
// Waits up to seconds for child pid to end, then kills it. Returns its wait status, or -1
// if it had to be killed.
int reap_child(pid_t pid, double seconds);

// ----------------------------------------------------------------------------
// the processes of a run, from /proc

// /proc/PID/NAME into text (at most size - 1 bytes, then a NUL); its length, -1 if pid is gone.
int read_pid_file(pid_t pid, const char* name, char* text, size_t size);
// The pids of the machine for which keep(pid, arg) is true, up to max of them into pids;
// returns how many there are (also beyond max).
int pids_where(int (*keep)(pid_t pid, const void* arg), const void* arg, pid_t* pids, int max);
// Whether pid exists and is not a zombie.
int pid_runs(pid_t pid);
// Waits (bounded) until p has `want` children; asserts it, and fills pids in fork order.
void proc_wait_for_children(const Proc* p, pid_t* pids, int want);
// Every pid in pids (n) is gone within seconds (0: now), not even a zombie; else kills it.
void expect_pids_gone(const pid_t* pids, int n, double seconds, const char* when);
// Nothing of p's process group is left within seconds of its exit; else kills the group.
void proc_expect_group_gone(const Proc* p, double seconds);

// ----------------------------------------------------------------------------
// files of a test

// The test's temporary directory, "" until temp_dir_make (an .init) made it.
extern char temp_dir[64];

// Makes temp_dir, /tmp/TEST_BINARY.XXXXXX; proc_end_leftovers removes it, and so does the
// test's exit (after cr_skip_test no .fini runs).
void temp_dir_make(void);
// Removes path and, if it is a directory, everything in it.
void remove_tree(const char* path);
// The whole file at path, NUL-terminated (malloc); its length into *len unless NULL.
char* read_file(const char* path, size_t* len);
// Writes text as the whole file at path, created with mode.
void write_file(const char* path, const char* text, mode_t mode);
// Splits text into at most max lines (modifies text: each newline becomes a NUL); returns how many.
int split_lines(char* text, char** lines, int max);

// ----------------------------------------------------------------------------
// ports

// The TCP port of a test: DDP_PORT_BASE (default 29700) + offset, or, where something else
// holds that one already (another checkout's suite, a job left running), the first free
// one at + 1000, + 2000, ... Every suite keeps to offsets of its own (test_multi_node 0-49,
// test_rendezvous 50-99, test_scripts 100-199, test_trace 380-389), so that its tests run
// side by side.
int port_for_test(int offset);

// ----------------------------------------------------------------------------
// the build under test

// The path of the program name of the build under test: $DDP_BUILD/name when DDP_BUILD is
// set (`make asan` tests the programs of build/asan), else build/name.
const char* build_program(const char* name);

#endif
