#!/bin/sh
# An access matrix under authentication: users holding read, write and
# readwrite on the prefix /app/, one with no role and root, each trying
# every kind of request with etcdctl 3.4 against one fresh, single-member
# endpoint; the transcript from raftkv is compared line by line with the
# one from real etcd (tests/tests/auth.rs).
#
# Usage: etcdctl_access_session.sh http://127.0.0.1:PORT
set -u
EP=${1:?usage: etcdctl_access_session.sh ENDPOINT}
ETCDCTL=${ETCDCTL:-etcdctl}
export ETCDCTL_API=3
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

show() {
    for a in "$@"; do
        case $a in
        "" | *" "* | *'"'*) printf " '%s'" "$a" ;;
        *) printf ' %s' "$a" ;;
        esac
    done
}

# as USER[:PASSWORD] ARGS...: one etcdctl command as that user ("-" for none).
as() {
    u=$1
    shift
    echo "\$ [$u] etcdctl$(show "$@")"
    if [ "$u" = "-" ]; then
        "$ETCDCTL" --endpoints "$EP" "$@" 2>&1
    else
        "$ETCDCTL" --endpoints "$EP" --user "$u" "$@" 2>&1
    fi
    echo "exit=$?"
}

# quiet USER ARGS...: the command and its exit code only (etcd 3.4 answers
# RoleGet with no permissions once authentication is enabled; raftkv with
# them: only whether it is allowed compares).
quiet() {
    u=$1
    shift
    echo "\$ [$u] etcdctl$(show "$@") (exit code only)"
    "$ETCDCTL" --endpoints "$EP" --user "$u" "$@" > /dev/null 2>&1
    echo "exit=$?"
}

section() {
    echo "### $1"
}

section "setup"
as - user add root:rootpw
as - user add reader:readerpw
as - user add writer:writerpw
as - user add both:bothpw
as - user add nobody:nobodypw
as - role add r
as - role add w
as - role add rw
as - role grant-permission r --prefix=true read /app/
as - role grant-permission w --prefix=true write /app/
as - role grant-permission rw --prefix=true readwrite /app/
as - user grant-role reader r
as - user grant-role writer w
as - user grant-role both rw
as - put /app/x 1
as - put /other 1
as - auth enable
as - get /app/x
as reader:wrongpw get /app/x
as nouser:pw get /app/x

for who in reader:readerpw writer:writerpw both:bothpw nobody:nobodypw root:rootpw; do
    section "$who"
    as "$who" put /app/x 2
    as "$who" put /other 2
    as "$who" put /app/p 3 --prev-kv
    as "$who" get /app/x
    as "$who" get /app/ --prefix
    as "$who" get /other
    as "$who" get '' --from-key
    as "$who" get /app/x --consistency=s
    as "$who" del /app/nothing
    as "$who" del /app/p --prev-kv
    as "$who" del /other
    printf 'value("/app/x") = "2"\n\nput /app/t ok\n\nput /app/t no\n\n' > "$TMP/txn"
    echo "\$ [$who] etcdctl txn < app-only"
    "$ETCDCTL" --endpoints "$EP" --user "$who" txn < "$TMP/txn" 2>&1
    echo "exit=$?"
    printf 'value("/app/x") = "2"\n\nput /app/t ok\n\nput /other no\n\n' > "$TMP/txn"
    echo "\$ [$who] etcdctl txn < touching-other"
    "$ETCDCTL" --endpoints "$EP" --user "$who" txn < "$TMP/txn" 2>&1
    echo "exit=$?"
    lease=$("$ETCDCTL" --endpoints "$EP" --user root:rootpw lease grant 600 | awk '{print $2}')
    "$ETCDCTL" --endpoints "$EP" --user root:rootpw put /app/leased v --lease "$lease" > /dev/null
    as "$who" lease revoke "$lease"
    as "$who" lease grant 60
    echo "\$ [$who] etcdctl watch /app/x --rev 1 (2 s)"
    timeout 2 "$ETCDCTL" --endpoints "$EP" --user "$who" watch /app/x --rev 1 2>&1
    echo "exit=$?"
    as "$who" lock /app/lock -- echo locked
    as "$who" user get reader
    quiet "$who" role get r
    as "$who" user list
    as "$who" role list
    as "$who" user add x:y
    as "$who" member list
    quiet "$who" endpoint hashkv
    as "$who" defrag
    as "$who" compaction 1
done

section "disable"
as reader:readerpw auth disable
as root:rootpw auth disable
as - get /other
