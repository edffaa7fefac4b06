/*
 * hostfile.h - reading a hosts file (hosts.txt): the nodes of a multi-node job.
 *
 * One node per line, the master first, as in an MPI hostfile:
 *
 *   HOST [slots=N]      # a comment; blank lines are skipped
 *
 * HOST is a host name (labels of letters, digits and '-', joined by dots) or a dotted
 * IPv4 address; N, the workers on that node, is in [1, HOSTFILE_MAX_SLOTS]. The parser is
 * strict, as a typo here starts a job on the wrong machines or hands ssh an option: the
 * first bad line refuses the whole file, "line N: reason". A host listed twice is refused,
 * except loopback addresses (localhost, 127.x.x.x), the way to run several nodes on one
 * machine. build/hostfile (tools/hostfile.c) prints what it reads, for the scripts.
 *
 * APIs: HostEntry, HostList, HOSTFILE_MAX_HOSTS, HOSTFILE_MAX_SLOTS, HOSTFILE_NAME_MAX,
 *       HOSTFILE_MAX_BYTES, hostfile_parse.
 */
#ifndef HOSTFILE_H
#define HOSTFILE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HOSTFILE_MAX_HOSTS 64        // nodes in a job, as many as the rendezvous takes
#define HOSTFILE_MAX_SLOTS 64        // workers on a node (WORKERS_MAX)
#define HOSTFILE_NAME_MAX 253        // characters of a host name, as DNS allows
#define HOSTFILE_MAX_BYTES (1 << 20) // a longer text is not a hosts file

typedef struct {
    char name[HOSTFILE_NAME_MAX + 1];
    int slots; // 0 where the line gives none
    int line;  // its line in the file, from 1
} HostEntry;

typedef struct {
    HostEntry hosts[HOSTFILE_MAX_HOSTS]; // (count) in the file's order, the master first
    int count;
} HostList;

// Parses the len bytes of text (a NUL among them is a bad character, not the end) into
// list. Returns 0, or -1 with "line N: reason" in why (why_len bytes; for a text longer
// than HOSTFILE_MAX_BYTES, that reason alone); list then holds the hosts of the lines before.
int hostfile_parse(HostList* list, const char* text, size_t len, char* why, size_t why_len);

#ifdef __cplusplus
}
#endif

#endif
