#!/bin/sh
# Replays the etcdctl 3.4 sessions of etcd's own documentation
# ("Interacting with etcd", the etcdctl README) against one fresh,
# single-member endpoint, so that the transcript from raftkv can be compared
# line by line with the transcript from real etcd.
#
# Usage: etcdctl_session.sh http://127.0.0.1:PORT
# The server must run with --max-request-bytes 4096.
#
# Every command is echoed before it runs (without --endpoints, so the port
# does not leak into the transcript), stderr is merged into stdout and the
# exit code follows on its own line. The only fields that differ between two
# runs are cluster_id, member_id, raft_term, member/lease ids in hex, the
# timestamps and client ids of etcdctl's retry warnings and the port: the
# test masks those.
#
# etcdctl 3.4 has no `get --count-only` (added in 3.5); counts are checked
# through the `count` field of `-w json` instead.
set -u
EP=${1:?usage: etcdctl_session.sh ENDPOINT}
ETCDCTL=${ETCDCTL:-etcdctl}
export ETCDCTL_API=3

# show ARGS...: the arguments as a shell would need them typed.
show() {
    for a in "$@"; do
        case $a in
        "" | *" "* | *'"'*) printf " '%s'" "$a" ;;
        *) printf ' %s' "$a" ;;
        esac
    done
}

# ctl ARGS...: run one etcdctl command.
ctl() {
    echo "\$ etcdctl$(show "$@")"
    "$ETCDCTL" --endpoints "$EP" "$@" 2>&1
    echo "exit=$?"
}

# ctl_stdin ARGS...: run one etcdctl command fed with this function's stdin,
# byte for byte (a txn's blocks each end with an empty line).
ctl_stdin() {
    input=$(mktemp)
    cat >"$input"
    echo "\$ etcdctl$(show "$@") <<EOF"
    cat "$input"
    echo "EOF"
    "$ETCDCTL" --endpoints "$EP" "$@" <"$input" 2>&1
    echo "exit=$?"
    rm -f "$input"
}

section() {
    echo
    echo "### $*"
}

section "put and get"
ctl put foo bar
ctl put foo1 bar1
ctl put foo2 bar2
ctl put foo3 bar3
ctl put zoo val
ctl put zoo1 val1
ctl put zoo2 val2
ctl get foo
ctl get foo --hex
ctl get foo --print-value-only
ctl get foo -w json
ctl get foo -w fields
ctl get foo foo3
ctl get --prefix foo
ctl get --prefix --limit=2 foo
ctl get --prefix --limit=2 foo -w json
ctl get --prefix foo --keys-only
ctl get --from-key b
ctl get --from-key foo2 --keys-only
ctl get "" --prefix --keys-only
ctl get missing
ctl get missing -w json

section "sort"
ctl put foo1 bar1-again
ctl get --prefix foo --sort-by=KEY --order=DESCEND
ctl get --prefix foo --sort-by=VERSION --order=DESCEND
ctl get --prefix foo --sort-by=CREATE --order=DESCEND
ctl get --prefix foo --sort-by=MODIFY --order=ASCEND
ctl get --prefix foo --sort-by=MODIFY --order=DESCEND
ctl get --prefix foo --sort-by=VALUE --order=ASCEND --keys-only
ctl get --prefix foo --order=DESCEND --limit=2

section "history"
ctl put hist v1
ctl put hist v2
ctl put hist v3
ctl get hist -w json
ctl get hist --rev=0
ctl get hist --rev=11
ctl get hist --rev=12
ctl get hist --rev=9
ctl get --prefix foo --rev=4 -w json
ctl get hist --rev=1000

section "delete"
ctl del foo
ctl del foo
ctl del --prev-kv foo1
ctl del foo2 foo9
ctl get --prefix foo
ctl del --prefix zoo
ctl put a 1
ctl put b 2
ctl put c 3
ctl del --from-key b --prev-kv
ctl get "" --from-key
ctl del --prefix "" -w json

section "transactions"
ctl put user1 bad
ctl_stdin txn -i <<'TXN'
value("user1") = "bad"

del user1

put user1 good

TXN
ctl get user1
ctl_stdin txn -i <<'TXN'
value("user1") = "bad"

del user1

put user1 good

TXN
ctl get user1
ctl_stdin txn <<'TXN'
value("user1") != "good"

put user1 bad

get user1
put user2 other

TXN
ctl_stdin txn <<'TXN'
mod("user1") > "0"
version("user1") = "1"
create("user1") < "1000"

put key1 overwrote-key1
get user1 --print-value-only

put key1 created-key1
put key2 "some extra key"

TXN
ctl_stdin txn -w json <<'TXN'
version("user1") > "5"

put key1 never

get user1
get key --prefix --keys-only
del key2

TXN
ctl_stdin txn <<'TXN'
create("nosuchkey") = "0"

put nosuchkey now


TXN
ctl get nosuchkey -w json

section "compaction"
ctl put cmp 1
ctl put cmp 2
ctl put cmp 3
ctl get cmp -w json
ctl compaction 5
ctl get foo --rev=4
ctl get --prefix foo --rev=5
ctl get hist --rev=11
ctl compaction 5
ctl compaction 3
ctl compaction --physical 10
ctl get hist --rev=9
ctl get hist --rev=10
ctl get hist --rev=11 -w json
ctl compaction 1000

section "errors"
ctl put "" v
ctl get ""
# A 5000-byte value, over --max-request-bytes 4096.
big=$(head -c 5000 /dev/zero | tr '\0' a)
echo "\$ etcdctl put big <5000 bytes>"
"$ETCDCTL" --endpoints "$EP" put big "$big" 2>&1
echo "exit=$?"
ctl get big
ctl_stdin txn <<'TXN'

put dup 1
put dup 2


TXN
ctl_stdin txn <<'TXN'

put dup 1
del dup


TXN
ctl_stdin txn <<'TXN'

put dup 1
get dup


TXN
ctl put --ignore-value nokey
ctl put --ignore-lease nokey v
ctl put --lease=1234abcd nokey v
ctl get nokey
ctl get cmp -w json

# Last, so that a server without leases still gets every other section
# compared at the same revisions.
section "leases"
echo "\$ etcdctl lease grant 300"
granted=$("$ETCDCTL" --endpoints "$EP" lease grant 300 2>&1)
status=$?
echo "$granted"
echo "exit=$status"
LEASE=$(echo "$granted" | awk '/granted/ {print $2}')
ctl lease list
ctl put --lease="$LEASE" leased yes
ctl put --lease="$LEASE" leased2 yes
ctl get --prefix leased
ctl put --ignore-lease leased again
# A put without --ignore-lease detaches the key from its lease.
ctl put --ignore-value leased
ctl get --prefix leased
ctl lease revoke "$LEASE"
ctl get --prefix leased
ctl lease revoke "$LEASE"
ctl lease list
