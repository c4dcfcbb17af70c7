#!/usr/bin/env bash
# A three-member raftkv cluster against a three-member cluster of Debian's
# etcd on this machine, with `raftkvctl bench` as the load generator for both.
# Run by `make bench-cluster` after the build; scripts/bench.sh is the
# single-member counterpart, and both share scripts/bench-lib.sh.
#
# Each round starts a fresh cluster of one server: three members on loopback
# ports, fsync on (the default for both), their data under one temporary
# directory, a cluster token of its own. Once every member answers and one
# is leader, the workloads run with 1000 clients over 100 connections, as in
# etcd's performance docs: puts against the leader's endpoint (those docs
# send writes to the leader), linearizable and serializable ranges of one
# key against all three endpoints. Then the cluster stops; the servers'
# clusters never run at the same time.
#
# The servers take turns for BENCH_ROUNDS rounds (default 3) and each figure
# is the best a server reached, which damps noise from other load on the
# machine without favouring either side.
#
# Progress goes to stderr; stdout gets the results table, then the same table
# in markdown for docs/benchmarks.md. Ratios read ">= 1.0 means raftkv is as
# good or better": raftkv/etcd for throughput, etcd/raftkv for latency.
#
# Knobs (environment): ETCD (etcd binary), CARGO_TARGET_DIR, BENCH_TMPDIR
# (where the data dirs go), BENCH_PORT (first member's client port, default
# 32479; member i takes BENCH_PORT+2i for clients and the port after it for
# peers), BENCH_KEEP=1 (keep data dirs and logs), BENCH_SCALE (divide request
# counts, for a quick smoke run), BENCH_ROUNDS, BENCH_SERVERS (default
# "etcd raftkv"), BENCH_WORKLOAD_TIMEOUT (seconds one workload may take,
# default 240).
set -euo pipefail

# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

PORT=${BENCH_PORT:-32479}
MEMBERS=3
CONNS=100
CLIENTS=1000
PUT_TOTAL=$((100000 / SCALE))
RANGE_TOTAL=$((100000 / SCALE))
VAL_SIZE=256
KEY_SPACE=100000

client_port() { echo $((PORT + 2 * $1)); }
peer_port() { echo $((PORT + 2 * $1 + 1)); }

# Every member's client endpoint, comma separated, and the --initial-cluster
# they all start with.
ENDPOINTS=
INITIAL_CLUSTER=
for i in $(seq 0 $((MEMBERS - 1))); do
    ENDPOINTS+=${ENDPOINTS:+,}127.0.0.1:$(client_port "$i")
    INITIAL_CLUSTER+=${INITIAL_CLUSTER:+,}m$i=http://127.0.0.1:$(peer_port "$i")
done

bench_setup bench-cluster

# leader: the client endpoint of the member that says it is leader, or
# nothing unless every member answers and exactly one says so. Read from
# `endpoint status` in its simple format ("endpoint, id, version, db size,
# is leader, ..."), where the 64-bit member ids need no arithmetic.
leader() {
    local status
    status=$(timeout 10 "$CTL" endpoint status --endpoints "$ENDPOINTS" \
        --dial-timeout 1s --command-timeout 2s 2>/dev/null) || return 0
    awk -F', ' -v members="$MEMBERS" '$5 == "true" { leader = $1; leaders++ }
        END { if (NR == members && leaders == 1) print leader }' <<<"$status"
}

# Ready once there is a leader and a linearizable read succeeds over a
# connection to each member. Sets LEADER.
cluster_ready() {
    LEADER=$(leader)
    [[ -n $LEADER ]] &&
        "$CTL" bench --endpoints "$ENDPOINTS" --conns "$MEMBERS" --clients "$MEMBERS" \
            --total "$MEMBERS" --json range bench-ready 2>/dev/null |
        jq -e --argjson n "$MEMBERS" '.errors == 0 and .requests == $n' >/dev/null 2>&1
}

# start_cluster etcd|raftkv ROUND: a fresh cluster with its own data dirs and
# token; sets LEADER.
start_cluster() {
    local which=$1 round=$2 i port
    local dir=$WORK/$which-$round
    # A member left over from an interrupted run would answer in our place.
    for i in $(seq 0 $((MEMBERS - 1))); do
        for port in "$(client_port "$i")" "$(peer_port "$i")"; do
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                log "port $port is in use; stop what holds it or set BENCH_PORT"
                return 1
            fi
        done
    done
    mkdir -p "$dir"
    for i in $(seq 0 $((MEMBERS - 1))); do
        spawn_server "$which" "$which m$i" "$dir/m$i.log" \
            --name "m$i" --data-dir "$dir/m$i" \
            --listen-client-urls "http://127.0.0.1:$(client_port "$i")" \
            --advertise-client-urls "http://127.0.0.1:$(client_port "$i")" \
            --listen-peer-urls "http://127.0.0.1:$(peer_port "$i")" \
            --initial-advertise-peer-urls "http://127.0.0.1:$(peer_port "$i")" \
            --initial-cluster "$INITIAL_CLUSTER" \
            --initial-cluster-token "${WORK##*/}-$which-$round" \
            --initial-cluster-state new
    done
    await_ready "$which cluster" cluster_ready
}

# measure etcd|raftkv ROUND: every workload against a fresh cluster of one server.
measure() {
    local s=$1 round=$2 out c
    log "$s: $MEMBERS-member cluster, put and range"
    start_cluster "$s" "$round" || return 0
    log "$s: leader at $LEADER"

    out=$(bench "$LEADER" --conns "$CONNS" --clients "$CLIENTS" --total "$PUT_TOTAL" \
        put --val-size "$VAL_SIZE" --key-space-size "$KEY_SPACE")
    keep "$s.put_rps" higher "$(jq -r .rps <<<"$out")"
    keep "$s.put_p99" lower "$(jq -r .p99_ms <<<"$out")"
    keep "$s.put_err" higher "$(jq -r .errors <<<"$out")"

    # The key the range workloads read: "00000000", 256 bytes.
    bench "$LEADER" --total 1 put --val-size "$VAL_SIZE" --sequential-keys >/dev/null
    for c in l s; do
        out=$(bench "$ENDPOINTS" --conns "$CONNS" --clients "$CLIENTS" --total "$RANGE_TOTAL" \
            range 00000000 --consistency "$c")
        keep "$s.range_${c}_rps" higher "$(jq -r .rps <<<"$out")"
        keep "$s.range_${c}_p99" lower "$(jq -r .p99_ms <<<"$out")"
        keep "$s.range_${c}_err" higher "$(jq -r .errors <<<"$out")"
    done

    # Puts sent to a member that lost the lead are forwarded, so a change
    # skews the figures without failing them: worth a note.
    [[ $(leader) == "$LEADER" ]] || log "$s: the leader changed during the round"
    stop_servers
}

run_rounds measure

CC="$CLIENTS clients / $CONNS conns"
print_table "$(
    echo "workload|etcd|raftkv|ratio"
    result_row "put, $CC to the leader, ${VAL_SIZE} B (req/s)" put_rps higher put_err
    result_row "put p99 (ms)" put_p99 lower put_err
    result_row "range 1 key, linearizable, $CC to all members (req/s)" range_l_rps higher range_l_err
    result_row "range linearizable p99 (ms)" range_l_p99 lower range_l_err
    result_row "range 1 key, serializable, $CC to all members (req/s)" range_s_rps higher range_s_err
    result_row "range serializable p99 (ms)" range_s_p99 lower range_s_err
)"
