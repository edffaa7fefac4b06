/*
 * test_hostfile.c - reading a hosts file (common/hostfile.c) and build/hostfile, which
 * prints what it read for the launcher scripts.
 *
 * The parser is strict: every kind of bad line is refused, with "line N: " and a reason
 * that quotes the word at fault. The program is run as the scripts run it (from the
 * repository root, after `make`), on files in the test's temporary directory.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hostfile.h"
#include "support/proc.h"

#define WHY_BYTES 512

// ----------------------------------------------------------------------------
// helpers

static HostList list; // 16 KiB: not on the stack

static int parse_text(const char* text, char* why) {
    return hostfile_parse(&list, text, strlen(text), why, WHY_BYTES);
}

static void expect_hosts(const char* text, int count) {
    char why[WHY_BYTES] = "";
    cr_assert_eq(parse_text(text, why), 0, "refused:\n%s\nbecause: %s", text, why);
    cr_assert_eq(list.count, count, "%d hosts, want %d, in:\n%s", list.count, count, text);
}

static void expect_host(int i, const char* name, int slots, int line) {
    const HostEntry* h = &list.hosts[i];
    cr_assert_str_eq(h->name, name, "host %d", i);
    cr_assert_eq(h->slots, slots, "host %d (%s): slots %d, want %d", i, name, h->slots, slots);
    cr_assert_eq(h->line, line, "host %d (%s): line %d, want %d", i, name, h->line, line);
}

// text (len bytes) must be refused with a message that starts "line N: " and has words.
static void expect_refused_len(const char* text, size_t len, int line, const char* words) {
    char why[WHY_BYTES] = "", want[32];
    cr_assert_eq(hostfile_parse(&list, text, len, why, sizeof why), -1, "accepted:\n%.*s", (int)len,
                 text);
    snprintf(want, sizeof want, "line %d: ", line);
    cr_assert_eq(strncmp(why, want, strlen(want)), 0, "'%s' does not start with '%s'", why, want);
    cr_assert_not_null(strstr(why, words), "'%s' does not say '%s'", why, words);
}

static void expect_refused(const char* text, int line, const char* words) {
    expect_refused_len(text, strlen(text), line, words);
}

// ----------------------------------------------------------------------------
// what a hosts file may hold

Test(hostfile, hosts_and_their_slots_are_read_in_the_order_of_the_file) {
    expect_hosts("node1 slots=2\nnode2\n10.0.0.3 slots=64\n", 3);
    expect_host(0, "node1", 2, 1);
    expect_host(1, "node2", 0, 2);
    expect_host(2, "10.0.0.3", 64, 3);
}

Test(hostfile, comments_blank_lines_tabs_and_windows_line_ends_are_ignored) {
    expect_hosts("# node9 slots=7\n"
                 "\n"
                 "  \t \r\n"
                 "\tnode1 \t slots=1   # the master\r\n"
                 "  # node8\n"
                 "node2#no space before the comment\n",
                 2);
    expect_host(0, "node1", 1, 4);
    expect_host(1, "node2", 0, 6);
}

Test(hostfile, a_last_line_without_a_newline_is_read) {
    expect_hosts("node1\nnode2 slots=3", 2);
    expect_host(1, "node2", 3, 2);
}

Test(hostfile, a_file_of_comments_or_nothing_is_an_empty_list) {
    expect_hosts("", 0);
    expect_hosts("# nodes go here\n\n", 0);
}

Test(hostfile, names_and_addresses_that_rfc_1123_allows_are_accepted) {
    const char* good[] = {"n",
                          "node-1",
                          "GPU01.cluster.example.org",
                          "1node.example",
                          "a.1b",
                          "192.168.0.255",
                          "0.0.0.0",
                          "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.x"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        expect_hosts(good[i], 1);
        cr_assert_str_eq(list.hosts[0].name, good[i]);
    }
}

Test(hostfile, a_name_of_253_characters_is_accepted_and_one_of_254_refused) {
    char name[300] = "";
    while (strlen(name) < 250) // labels of 9 characters and a dot
        strcat(name, "abcdefghi.");
    strcat(name, "abc"); // 253
    expect_hosts(name, 1);
    strcat(name, "d");
    expect_refused(name, 1, "longer than 253 characters");
}

Test(hostfile, slots_may_have_leading_zeros) {
    expect_hosts("node1 slots=08", 1);
    expect_host(0, "node1", 8, 1);
}

// ----------------------------------------------------------------------------
// what is refused

Test(hostfile, hosts_with_other_characters_are_refused_naming_the_line) {
    const char* bad[] = {"node_1", "user@node1", "node1:29500", "[::1]", "nöde", "a/b", "a=b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[64];
        snprintf(text, sizeof text, "node0\n%s slots=1\n", bad[i]);
        expect_refused(text, 2, "has a character other than letters, digits, '-' and '.'");
    }
}

Test(hostfile, a_host_that_looks_like_an_option_is_refused) {
    expect_refused("-oProxyCommand=touch.x\n", 1, "host '-oProxyCommand=touch.x'");
    expect_refused("-node1\n", 1, "starts or ends with '-'");
    expect_refused("node1-.example\n", 1, "starts or ends with '-'");
}

Test(hostfile, empty_and_overlong_parts_of_a_name_are_refused) {
    expect_refused("a..b\n", 1, "empty part");
    expect_refused(".node1\n", 1, "empty part");
    expect_refused("node1.\n", 1, "empty part");
    expect_refused("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.x\n", 1,
                   "part longer than 63 characters");
}

Test(hostfile, a_name_ending_in_a_number_must_be_an_ipv4_address) {
    const char* bad[] = {"1.2.3", "256.1.1.1", "1.2.3.4.5", "01.2.3.4", "12345", "node.1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_refused(bad[i], 1, "not an IPv4 address");
}

Test(hostfile, slots_outside_1_to_64_or_not_a_number_are_refused) {
    const char* bad[] = {"0", "65", "-1", "+2", "", "2x", "1e1", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[64], words[64];
        snprintf(text, sizeof text, "node1\nnode2 slots=%s\n", bad[i]);
        snprintf(words, sizeof words, "slots must be an integer in [1, 64], got '%s'", bad[i]);
        expect_refused(text, 2, words);
    }
}

Test(hostfile, a_word_after_the_host_other_than_slots_is_refused) {
    expect_refused("node1 slot=2\n", 1, "'slot=2' after the host");
    expect_refused("node1 slots = 2\n", 1, "'slots' after the host");
    expect_refused("node1 node2\n", 1, "'node2' after the host");
    expect_refused("node1 max_slots=4\n", 1, "'max_slots=4' after the host");
}

Test(hostfile, a_word_after_slots_is_refused) {
    expect_refused("node1 slots=2 slots=3\n", 1, "'slots=3' after slots=2");
}

Test(hostfile, a_host_listed_twice_is_refused_whatever_its_case) {
    expect_refused("node1\nnode2\nNODE1 slots=2\n", 3,
                   "host 'NODE1' is listed twice (first on line 1)");
}

Test(hostfile, loopback_addresses_may_repeat_for_several_nodes_on_one_machine) {
    expect_hosts("127.0.0.1 slots=1\n127.0.0.1 slots=1\nlocalhost\nLOCALHOST\n127.0.0.2\n", 5);
    expect_host(1, "127.0.0.1", 1, 2);
}

Test(hostfile, a_65th_host_is_refused) {
    char text[64 * 16 + 32] = "";
    for (int i = 1; i <= 64; i++)
        sprintf(text + strlen(text), "node%d\n", i);
    expect_hosts(text, 64);
    strcat(text, "node65\n");
    expect_refused(text, 65, "more than 64 hosts");
}

Test(hostfile, a_nul_byte_is_a_bad_character_not_the_end_of_the_text) {
    const char text[] = "node1\nno\0de2\n";
    expect_refused_len(text, sizeof text - 1, 2, "host 'no\\x00de2'");
}

Test(hostfile, unprintable_bytes_are_escaped_and_a_long_word_is_cut_in_the_message) {
    expect_refused("node\x1b[31m\n", 1, "host 'node\\x1b[31m'");
    char text[400];
    memset(text, 'x', 300);
    strcpy(text + 300, "_\n");
    char why[WHY_BYTES];
    cr_assert_eq(parse_text(text, why), -1);
    cr_assert_lt(strlen(why), 200, "the message shows all of a 301-byte word: %s", why);
    cr_assert_not_null(strstr(why, "xxx...'"), "no '...' where the word was cut: %s", why);
}

Test(hostfile, a_text_longer_than_the_limit_is_refused) {
    size_t len = HOSTFILE_MAX_BYTES + 1;
    char* text = malloc(len);
    cr_assert_not_null(text);
    memset(text, '\n', len);
    char why[WHY_BYTES];
    int rc = hostfile_parse(&list, text, len, why, sizeof why);
    free(text);
    cr_assert_eq(rc, -1, "a text of %zu bytes was accepted", len);
    cr_assert_not_null(strstr(why, "longer than"), "%s", why);
}

// ----------------------------------------------------------------------------
// build/hostfile

static void make_tmp_dir(void) {
    cr_assert(access(build_program("hostfile"), X_OK) == 0,
              "run from the repository root after `make NO_CUDA=1`");
    temp_dir_make();
}

TestSuite(hostfile_program, .init = make_tmp_dir, .fini = proc_end_leftovers, .timeout = 60);

// Runs build/hostfile on a file that holds text.
static Proc run_on(const char* text, char* path, size_t path_len) {
    snprintf(path, path_len, "%s/hosts", temp_dir);
    write_file(path, text, 0644);
    return proc_run(build_program("hostfile"), (const char*[]){path, NULL}, NULL);
}

Test(hostfile_program, prints_host_and_slots_per_line_with_0_for_none) {
    char path[128];
    Proc p = run_on("# the nodes\nnode1 slots=2\n\nnode2\n", path, sizeof path);
    cr_assert_eq(p.status, 0, "status %d; stderr:\n%s", p.status, p.err.text);
    cr_assert_str_eq(p.out.text, "node1 2\nnode2 0\n");
    cr_assert_str_empty(p.err.text);
    proc_free(&p);
}

Test(hostfile_program, a_bad_file_exits_2_with_one_line_naming_the_file_and_the_line) {
    char path[128], want[256];
    Proc p = run_on("node1\nnode2 slots=0\n", path, sizeof path);
    cr_assert_eq(p.status, 2, "status %d", p.status);
    cr_assert_str_empty(p.out.text, "it printed hosts of a bad file:\n%s", p.out.text);
    snprintf(want, sizeof want, "error: %s: line 2: slots must be an integer in [1, 64], got '0'\n",
             path);
    cr_assert_str_eq(p.err.text, want);
    proc_free(&p);
}

Test(hostfile_program, a_missing_file_exits_2_naming_it) {
    Proc p = proc_run(build_program("hostfile"), (const char*[]){"no/such/hosts.txt", NULL}, NULL);
    cr_assert_eq(p.status, 2, "status %d", p.status);
    cr_assert_str_eq(p.err.text, "error: no/such/hosts.txt: No such file or directory\n");
    proc_free(&p);
}

Test(hostfile_program, no_file_at_all_exits_2_with_the_usage) {
    Proc p = proc_run(build_program("hostfile"), (const char*[]){NULL}, NULL);
    cr_assert_eq(p.status, 2, "status %d", p.status);
    cr_assert_not_null(strstr(p.err.text, "usage: hostfile FILE"), "stderr:\n%s", p.err.text);
    proc_free(&p);
}
