/*
 * fuzz_hostfile.c - libFuzzer target: common/hostfile.c's parser on any bytes (make fuzz).
 *
 * Beyond what the sanitizers catch, every run checks the parser's promises: a refusal says
 * "line N: " (or names the size limit) in printable characters, whatever the input held; an
 * accepted list has at most HOSTFILE_MAX_HOSTS hosts, each a valid name with slots in
 * [0, HOSTFILE_MAX_SLOTS] on increasing lines, none repeated but loopback addresses; and
 * the list written back as a hosts file parses to the same list. A broken promise aborts,
 * which libFuzzer reports as a crash.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "hostfile.h"

static HostList list, again; // 16 KiB each: not on the stack

static void expect(int ok, const char* what) {
    if (!ok) {
        fprintf(stderr, "fuzz_hostfile: broken promise: %s\n", what);
        abort();
    }
}

static void check_refusal(const char* why, size_t size) {
    expect(strncmp(why, "line ", 5) == 0 || size > HOSTFILE_MAX_BYTES, "a reason without a line");
    for (const char* c = why; *c != '\0'; c++)
        expect(*c >= 0x20 && *c < 0x7f, "an unprintable byte in the reason");
}

static int is_loopback(const char* name) {
    struct in_addr addr;
    if (inet_pton(AF_INET, name, &addr) == 1)
        return (ntohl(addr.s_addr) >> 24) == 127;
    return strcasecmp(name, "localhost") == 0;
}

static void check_host(int i) {
    const HostEntry* h = &list.hosts[i];
    size_t len = strnlen(h->name, sizeof h->name);
    expect(len > 0 && len <= HOSTFILE_NAME_MAX, "a name empty or too long");
    expect(strspn(h->name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.") ==
               len,
           "a name with another character");
    expect(h->slots >= 0 && h->slots <= HOSTFILE_MAX_SLOTS, "slots out of range");
    expect(i == 0 || h->line > list.hosts[i - 1].line, "lines not increasing");
    for (int j = 0; j < i && !is_loopback(h->name); j++)
        expect(strcasecmp(list.hosts[j].name, h->name) != 0, "a host repeated");
}

// The list as a hosts file, parsed again, is the same list (lines aside).
static void check_round_trip(void) {
    static char text[HOSTFILE_MAX_HOSTS * (HOSTFILE_NAME_MAX + 16)];
    size_t len = 0;
    for (int i = 0; i < list.count; i++) {
        const HostEntry* h = &list.hosts[i];
        len += (size_t)(h->slots > 0 ? sprintf(text + len, "%s slots=%d\n", h->name, h->slots)
                                     : sprintf(text + len, "%s\n", h->name));
    }
    char why[256];
    expect(hostfile_parse(&again, text, len, why, sizeof why) == 0,
           "the list written back is refused");
    expect(again.count == list.count, "the list written back has another count");
    for (int i = 0; i < list.count; i++)
        expect(strcmp(again.hosts[i].name, list.hosts[i].name) == 0 &&
                   again.hosts[i].slots == list.hosts[i].slots,
               "the list written back differs");
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    char why[256];
    if (hostfile_parse(&list, (const char*)data, size, why, sizeof why) != 0) {
        check_refusal(why, size);
        return 0;
    }
    expect(list.count >= 0 && list.count <= HOSTFILE_MAX_HOSTS, "count out of range");
    for (int i = 0; i < list.count; i++)
        check_host(i);
    check_round_trip();
    return 0;
}
