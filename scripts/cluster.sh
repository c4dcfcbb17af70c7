#!/usr/bin/env bash
# A local three-member raftkv cluster on loopback, laid out as etcd's
# Procfile: members infra1..3, clients on 127.0.0.1:2379, 22379 and 32379,
# peers on 2380, 22380 and 32380, each member's data in ./cluster.raftkv/NAME
# and its log in ./cluster.raftkv/NAME.log. Run by `make cluster` after the
# build.
#
# It stays in the foreground: prints how to use the cluster, says when a
# member exits (kill -9 one to watch the others elect a new leader), starts
# exited members again when Enter is pressed, and stops every member with
# SIGTERM on Ctrl-C. A later run restarts the same cluster from its data
# dirs; remove ./cluster.raftkv for a fresh one.
#
# Knobs (environment): CARGO_TARGET_DIR, CLUSTER_DIR (default cluster.raftkv).
set -euo pipefail

BIN=${CARGO_TARGET_DIR:-target}/debug
RAFTKV=$BIN/raftkv
CTL=$BIN/raftkvctl
DIR=${CLUSTER_DIR:-cluster.raftkv}
NAMES=(infra1 infra2 infra3)
CLIENT_PORTS=(2379 22379 32379)
PEER_PORTS=(2380 22380 32380)

INITIAL_CLUSTER=
ENDPOINTS=
for i in "${!NAMES[@]}"; do
    INITIAL_CLUSTER+=${INITIAL_CLUSTER:+,}${NAMES[i]}=http://127.0.0.1:${PEER_PORTS[i]}
    ENDPOINTS+=${ENDPOINTS:+,}127.0.0.1:${CLIENT_PORTS[i]}
done
PIDS=()

# Messages go to fd 3, the terminal's stderr; the watch loop below sends its
# own stderr to /dev/null, where bash reports a killed member's job too.
exec 3>&2
say() { echo "cluster: $*" >&3; }

for bin in "$RAFTKV" "$CTL"; do
    [[ -x $bin ]] || { say "$bin not found; run 'make build'"; exit 1; }
done
for port in "${CLIENT_PORTS[@]}" "${PEER_PORTS[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        say "port $port is in use (another cluster, or 'make run'?); stop what holds it"
        exit 1
    fi
done
mkdir -p "$DIR"

# start_member I: member I in the background, appending to its log. The
# --initial-* flags only matter on the first start; later starts find the
# member's identity in its data dir.
start_member() {
    local i=$1 name=${NAMES[$1]}
    local client=http://127.0.0.1:${CLIENT_PORTS[$1]} peer=http://127.0.0.1:${PEER_PORTS[$1]}
    "$RAFTKV" --name "$name" --data-dir "$DIR/$name" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$INITIAL_CLUSTER" --initial-cluster-token raftkv-local-cluster \
        --initial-cluster-state new >>"$DIR/$name.log" 2>&1 &
    PIDS[i]=$!
    echo "${PIDS[i]}" >"$DIR/$name.pid"
}

running() { kill -0 "${PIDS[$1]}" 2>/dev/null; }

# stop_all: SIGTERM to every member, then up to 10 s each before SIGKILL.
stop_all() {
    trap - EXIT INT TERM
    local i
    for i in "${!PIDS[@]}"; do kill "${PIDS[i]}" 2>/dev/null || true; done
    for i in "${!PIDS[@]}"; do
        for _ in $(seq 1 50); do running "$i" || break; sleep 0.2; done
        kill -KILL "${PIDS[i]}" 2>/dev/null || true
        wait "${PIDS[i]}" 2>/dev/null || true
        rm -f "$DIR/${NAMES[i]}.pid"
    done
    say "stopped; data and logs kept in $DIR"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# leader_name: the name of the member that reports itself leader in
# `endpoint status` ("endpoint, id, version, db size, is leader, ..."), or
# nothing.
leader_name() {
    local endpoint i
    endpoint=$("$CTL" endpoint status --endpoints "$ENDPOINTS" --dial-timeout 1s \
        --command-timeout 2s 2>/dev/null | awk -F', ' '$5 == "true" { print $1 }') || true
    for i in "${!NAMES[@]}"; do
        [[ $endpoint == *":${CLIENT_PORTS[i]}" ]] && echo "${NAMES[i]}"
    done
    return 0
}

for i in "${!NAMES[@]}"; do start_member "$i"; done
LEADER=
for _ in $(seq 1 150); do
    LEADER=$(leader_name)
    [[ -n $LEADER ]] && break
    for i in "${!NAMES[@]}"; do
        running "$i" || { say "${NAMES[i]} exited during startup:"; tail -n 20 "$DIR/${NAMES[i]}.log" >&2; exit 1; }
    done
    sleep 0.2
done
[[ -n $LEADER ]] || { say "no leader after 30 s; see $DIR/*.log"; exit 1; }

cat <<EOF
A three-member raftkv cluster is running; $LEADER leads.

  member  client                  peer                    pid
$(for i in "${!NAMES[@]}"; do
    printf '  %-7s http://127.0.0.1:%-7s http://127.0.0.1:%-7s %s\n' \
        "${NAMES[i]}" "${CLIENT_PORTS[i]}" "${PEER_PORTS[i]}" "${PIDS[i]}"
done)

Data and logs: $DIR/<member> and $DIR/<member>.log. In another terminal:

  export ETCDCTL_API=3 ENDPOINTS=$ENDPOINTS
  etcdctl --endpoints \$ENDPOINTS put greeting hello
  etcdctl --endpoints \$ENDPOINTS member list -w table
  $CTL --endpoints \$ENDPOINTS endpoint status -w table   # who leads

  # failover: watch the leader column, then kill the leader
  watch -n 0.5 etcdctl --endpoints \$ENDPOINTS endpoint status -w table
  kill -9 \$(cat $DIR/$LEADER.pid)
  etcdctl --endpoints \$ENDPOINTS get greeting           # still there

Press Enter here to start exited members again, Ctrl-C to stop the cluster.
EOF

REPORTED=()
while true; do
    for i in "${!NAMES[@]}"; do
        if ! running "$i" && [[ -z ${REPORTED[i]:-} ]]; then
            status=0
            wait "${PIDS[i]}" 2>/dev/null || status=$?
            say "${NAMES[i]} (pid ${PIDS[i]}) exited with status $status; Enter starts it again"
            REPORTED[i]=1
        fi
    done
    if read -r -t 1 _; then
        for i in "${!NAMES[@]}"; do
            if ! running "$i"; then
                start_member "$i"
                REPORTED[i]=
                say "${NAMES[i]} started again, pid ${PIDS[i]}"
            fi
        done
    elif (($? <= 128)); then
        # Not a terminal (stdin at end of file): nothing to read, keep watching.
        sleep 1
    fi
done 2>/dev/null
