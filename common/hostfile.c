/*
 * hostfile.c - reading a hosts file (see hostfile.h).
 *
 * A line is cut at '#' and split at blanks (space, tab, and the CR of a file saved on
 * Windows) into words: the host, then at most a slots=N. Each word is checked before it
 * is kept. The text may be anything, so a message shows a word cut short and with every
 * unprintable byte escaped.
 */
#include "hostfile.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define LABEL_MAX 63                    // characters of one part of a host name (DNS)
#define SHOWN_MAX 48                    // characters of a word that a message shows
#define SHOWN_BYTES (SHOWN_MAX * 4 + 4) // the word, escaped, then "..." or not
#define SLOTS_KEY "slots="
#define SLOTS_KEY_LEN (sizeof SLOTS_KEY - 1)
#define SLOTS_DIGITS_MAX 9 // more digits than this are out of range anyway (and would overflow)

typedef struct {
    const char* text; // not NUL-terminated
    size_t len;
} Word;

// ----------------------------------------------------------------------------
// messages

// Writes "line N: " and the message into why; returns -1, for the caller to return.
static int refuse(char* why, size_t why_len, int line, const char* format, ...)
    __attribute__((format(printf, 4, 5)));
static int refuse(char* why, size_t why_len, int line, const char* format, ...) {
    int n = snprintf(why, why_len, "line %d: ", line);
    if (n >= 0 && (size_t)n < why_len) {
        va_list args;
        va_start(args, format);
        vsnprintf(why + n, why_len - (size_t)n, format, args);
        va_end(args);
    }
    return -1;
}

// w as a message shows it: at most SHOWN_MAX characters, then "..."; a byte outside
// printable ASCII (and '\') as \xNN.
static const char* shown(char out[SHOWN_BYTES], Word w) {
    size_t n = 0;
    for (size_t i = 0; i < w.len && i < SHOWN_MAX; i++) {
        unsigned char c = (unsigned char)w.text[i];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            out[n++] = (char)c;
        else
            n += (size_t)snprintf(out + n, 5, "\\x%02x", c);
    }
    snprintf(out + n, 4, "%s", w.len > SHOWN_MAX ? "..." : "");
    return out;
}

// ----------------------------------------------------------------------------
// words

static int is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\r';
}

// Splits line (len bytes) into at most max words; returns how many there are, also
// beyond max.
static int split_words(const char* line, size_t len, Word* words, int max) {
    int count = 0;
    size_t i = 0;
    while (i < len) {
        while (i < len && is_blank(line[i]))
            i++;
        if (i == len)
            break;
        size_t start = i;
        while (i < len && !is_blank(line[i]))
            i++;
        if (count < max)
            words[count] = (Word){line + start, i - start};
        count++;
    }
    return count;
}

// ----------------------------------------------------------------------------
// hosts

static int is_digit(char c) {
    return c >= '0' && c <= '9';
}

static int is_name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '-';
}

static int is_ipv4(const char* name) {
    struct in_addr addr;
    return inet_pton(AF_INET, name, &addr) == 1;
}

static int all_digits(const char* text, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (!is_digit(text[i]))
            return 0;
    return 1;
}

// NULL if host is a host name (RFC 1123: labels of letters, digits and '-', not at a
// label's ends, joined by dots) or a dotted IPv4 address; otherwise what is wrong with it.
// A name whose last label is a number must be an IPv4 address: no top-level domain is one.
static const char* host_problem(Word host) {
    if (host.len > HOSTFILE_NAME_MAX)
        return "is longer than 253 characters";
    for (size_t i = 0; i < host.len; i++)
        if (host.text[i] != '.' && !is_name_char(host.text[i]))
            return "has a character other than letters, digits, '-' and '.'";
    int numeric = 0; // the last label so far is all digits
    for (size_t start = 0, end = 0; end < host.len; start = end + 1) {
        const char* dot = memchr(host.text + start, '.', host.len - start);
        end = dot != NULL ? (size_t)(dot - host.text) : host.len;
        if (end == start || (dot != NULL && end + 1 == host.len))
            return "has an empty part: two dots in a row, or a dot at an end";
        if (end - start > LABEL_MAX)
            return "has a part longer than 63 characters";
        if (host.text[start] == '-' || host.text[end - 1] == '-')
            return "has a part that starts or ends with '-'";
        numeric = all_digits(host.text + start, end - start);
    }
    char name[HOSTFILE_NAME_MAX + 1];
    snprintf(name, sizeof name, "%.*s", (int)host.len, host.text);
    if (numeric && !is_ipv4(name))
        return "ends in a number but is not an IPv4 address (a.b.c.d, each in [0, 255])";
    return NULL;
}

// localhost and 127.x.x.x: several nodes of one machine may share these.
static int is_loopback(const char* name) {
    struct in_addr addr;
    if (inet_pton(AF_INET, name, &addr) == 1)
        return (ntohl(addr.s_addr) >> 24) == 127;
    return strcasecmp(name, "localhost") == 0;
}

// Reads the N of "slots=N" into *slots: 0, 1 if w is not slots=..., 2 if N is not in range.
static int parse_slots(Word w, int* slots) {
    if (w.len < SLOTS_KEY_LEN || memcmp(w.text, SLOTS_KEY, SLOTS_KEY_LEN) != 0)
        return 1;
    Word n = {w.text + SLOTS_KEY_LEN, w.len - SLOTS_KEY_LEN};
    if (n.len == 0 || n.len > SLOTS_DIGITS_MAX || !all_digits(n.text, n.len))
        return 2;
    int value = 0;
    for (size_t i = 0; i < n.len; i++)
        value = value * 10 + (n.text[i] - '0');
    if (value < 1 || value > HOSTFILE_MAX_SLOTS)
        return 2;
    *slots = value;
    return 0;
}

// ----------------------------------------------------------------------------
// lines

// Appends host unless it is listed already (loopback addresses may repeat) or the list is
// full.
static int add_host(HostList* list, Word host, int slots, int line, char* why, size_t why_len) {
    HostEntry e = {.slots = slots, .line = line};
    memcpy(e.name, host.text, host.len); // host_problem checked its length
    e.name[host.len] = '\0';
    int may_repeat = is_loopback(e.name);
    for (int i = 0; i < list->count && !may_repeat; i++)
        if (strcasecmp(list->hosts[i].name, e.name) == 0)
            return refuse(why, why_len, line, "host '%s' is listed twice (first on line %d)",
                          e.name, list->hosts[i].line);
    if (list->count == HOSTFILE_MAX_HOSTS)
        return refuse(why, why_len, line, "more than %d hosts", HOSTFILE_MAX_HOSTS);
    list->hosts[list->count++] = e;
    return 0;
}

// One line (len bytes, without its newline): nothing, or HOST [slots=N], then a comment.
static int parse_line(HostList* list, const char* text, size_t len, int line, char* why,
                      size_t why_len) {
    const char* comment = memchr(text, '#', len);
    Word words[3];
    int count = split_words(text, comment != NULL ? (size_t)(comment - text) : len, words, 3);
    if (count == 0)
        return 0;
    char quoted[SHOWN_BYTES];
    const char* problem = host_problem(words[0]);
    if (problem != NULL)
        return refuse(why, why_len, line, "host '%s' %s", shown(quoted, words[0]), problem);
    int slots = 0, bad = count > 1 ? parse_slots(words[1], &slots) : 0;
    if (bad == 1)
        return refuse(why, why_len, line, "'%s' after the host: a line is HOST [slots=N]",
                      shown(quoted, words[1]));
    if (bad == 2) {
        Word n = {words[1].text + SLOTS_KEY_LEN, words[1].len - SLOTS_KEY_LEN};
        return refuse(why, why_len, line, "slots must be an integer in [1, %d], got '%s'",
                      HOSTFILE_MAX_SLOTS, shown(quoted, n));
    }
    if (count > 2)
        return refuse(why, why_len, line, "'%s' after slots=%d: a line is HOST [slots=N]",
                      shown(quoted, words[2]), slots);
    return add_host(list, words[0], slots, line, why, why_len);
}

int hostfile_parse(HostList* list, const char* text, size_t len, char* why, size_t why_len) {
    list->count = 0;
    if (len > HOSTFILE_MAX_BYTES) {
        snprintf(why, why_len, "longer than %d bytes", HOSTFILE_MAX_BYTES);
        return -1;
    }
    int line = 1;
    for (size_t start = 0; start < len; line++) {
        const char* newline = memchr(text + start, '\n', len - start);
        size_t end = newline != NULL ? (size_t)(newline - text) : len;
        if (parse_line(list, text + start, end - start, line, why, why_len) != 0)
            return -1;
        start = end + 1;
    }
    return 0;
}
