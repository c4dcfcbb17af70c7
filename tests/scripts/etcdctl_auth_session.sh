#!/bin/sh
# The etcdctl 3.4 user and role commands of etcd's authentication guide
# ("Role-based access control"), with their error cases, against one fresh,
# single-member endpoint, so that the transcript from raftkv can be compared
# line by line with the transcript from real etcd.
#
# Usage: etcdctl_auth_session.sh http://127.0.0.1:PORT
#
# Every command is echoed before it runs (without --endpoints), stderr is
# merged into stdout and the exit code follows on its own line. Nothing
# here enables authentication: raftkv refuses `auth enable` until it
# enforces permissions (tests/tests/auth.rs checks that apart).
set -u
EP=${1:?usage: etcdctl_auth_session.sh ENDPOINT}
ETCDCTL=${ETCDCTL:-etcdctl}
export ETCDCTL_API=3

show() {
    for a in "$@"; do
        case $a in
        "" | *" "* | *'"'*) printf " '%s'" "$a" ;;
        *) printf ' %s' "$a" ;;
        esac
    done
}

ctl() {
    echo "\$ etcdctl$(show "$@")"
    "$ETCDCTL" --endpoints "$EP" "$@" 2>&1
    echo "exit=$?"
}

section() {
    echo "### $1"
}

section "users"
ctl user add root:rootpw
ctl user add alice:alicepw
ctl user add alice:again
ctl user add bob --no-password
ctl user add 'carol:pass with spaces'
ctl user list
ctl user get alice
ctl user get nobody
ctl user passwd nobody --interactive=false <<IN
x
IN
ctl user passwd alice --interactive=false <<IN
newpw
IN
ctl user delete carol
ctl user delete carol
ctl user list

section "roles"
ctl role add reader
ctl role add writer
ctl role add reader
ctl role add root
ctl role list
ctl role get reader
ctl role get nobody
ctl role grant-permission reader read /app/
ctl role grant-permission reader --prefix=true read /config/
ctl role grant-permission writer readwrite /app/a /app/z
ctl role grant-permission writer write --prefix=true /app/
ctl role grant-permission writer read /app/a /app/z
ctl role grant-permission --from-key writer read /zz
ctl role grant-permission nobody read /x
ctl role get reader
ctl role get writer
ctl role get writer -w json
ctl role revoke-permission writer /app/a /app/z
ctl role revoke-permission writer /app/a /app/z
ctl role revoke-permission reader /nothing
ctl role revoke-permission nobody /app/
ctl role get writer

section "grants"
ctl user grant-role alice reader
ctl user grant-role alice writer
ctl user grant-role alice reader
ctl user grant-role alice nobody
ctl user grant-role nobody reader
ctl user grant-role root root
ctl user get alice
ctl user get alice --detail
ctl user get root
ctl user revoke-role alice writer
ctl user revoke-role alice writer
ctl user revoke-role nobody reader
ctl user get alice
ctl user list -w json

section "deletions"
ctl role delete reader
ctl role delete reader
ctl user get alice
ctl role list
ctl user delete bob
ctl user list
ctl auth disable
