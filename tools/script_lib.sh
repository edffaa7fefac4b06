# script_lib.sh - what launch.sh, start_multi_node.sh and setup.sh share: the checks of
# their environment and flags, and the remote shell. Sourced (bash), after the script has
# defined die: one line on stderr, exit status 2.
#
# Every value from the environment or a flag is checked before any use, as strictly as
# the programs check their flags. Not only for the user's sake: bash evaluates an array
# subscript, $((...)) and [[ A -eq B ]] as arithmetic, and arithmetic on a value such as
# 'PATH[$(cmd)]' (a variable that is set, then a subscript) runs cmd. An empty value
# counts as unset, as it does for the programs.
#
# The remote shell's contract is ssh's: `RSH HOST COMMAND` runs the one string COMMAND
# with the remote account's shell (sh -c, in a fresh environment). ssh joins all its
# arguments into one string, so words given apart would arrive split at every blank and
# unquoted; hence one string, every word in it quoted for a POSIX shell (sh_quote).

# check_int NAME LABEL MIN MAX [WHAT]: the variable NAME, unless empty, must be an integer
# in [MIN, MAX], digits only; it is rewritten as plain decimal ("08" becomes "8").
check_int() {
    local value=${!1:-}
    [ -n "$value" ] || return 0
    # At most 10 digits, so that the comparison cannot overflow.
    [[ $value =~ ^[0-9]{1,10}$ ]] && ((10#$value >= $3 && 10#$value <= $4)) ||
        die "$2 must be an integer in [$3, $4]${5:-}, got ${value@Q}"
    printf -v "$1" '%d' "$((10#$value))"
}

# check_path NAME: the path in the variable NAME, unless empty, must not start with '-'
# (which a program reads as an option, or "-" as standard input) nor hold control
# characters (a newline would split the lines the scripts read and print).
check_path() {
    local value=${!1:-}
    [ -n "$value" ] || return 0
    [[ $value != -* && $value != *[[:cntrl:]]* ]] ||
        die "$1 must be a path (not starting with '-', without control characters), got ${value@Q}"
}

# check_host NAME HOSTFILE: the variable NAME, unless empty, must be a host name or an IPv4
# address as hosts.txt takes them: the line it would make there must pass HOSTFILE
# (build/hostfile, common/hostfile.c's parser).
check_host() {
    local value=${!1:-}
    [ -n "$value" ] || return 0
    [[ $value != *[[:space:][:cntrl:]#]* ]] && printf '%s\n' "$value" | "$2" - >/dev/null 2>&1 ||
        die "$1 must be a host name or an IPv4 address, got ${value@Q}"
}

# sh_quote WORD...: the WORDs as one string that a POSIX shell reads back as the same words,
# whatever they hold (blanks, quotes, $, `, \, newlines): each in single quotes, a ' in one
# as '\''. (printf %q is not enough: its $'...' is bash's, not sh's.)
sh_quote() {
    local word out=
    for word in "$@"; do out+=" '${word//\'/\'\\\'\'}'"; done
    printf '%s' "${out# }"
}

# remote_shell HOST COMMAND: runs the shell command string COMMAND on HOST, as
# `ssh HOST COMMAND` does: through DDP_RSH when it is set (its words split at blanks,
# never expanded as file names), else ssh, which must not ask for a password.
remote_shell() {
    local rsh=()
    [ -z "${DDP_RSH:-}" ] || read -r -a rsh <<<"$DDP_RSH"
    [ ${#rsh[@]} -gt 0 ] || rsh=(ssh -o BatchMode=yes -o ConnectTimeout=10)
    "${rsh[@]}" "$1" "$2"
}
