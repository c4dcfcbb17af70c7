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
# default 240), BENCH_COMPACTION=0 (skip the compaction figures), BENCH_VALUES
# (a file that gets every figure of every round, for medians).
#
# Besides throughput and p99: the members' CPU seconds per 10 000 requests
# of each workload (user and system time from /proc, all three members),
# and a compaction of a million revisions under a put load (p99 with and
# without it, and the elections it caused).
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
# The compaction figures: a history of COMPACT_REVS puts compacted at once
# while COMPACT_LOAD puts run (BENCH_COMPACTION=0 skips them).
COMPACT_REVS=$((1000000 / SCALE))
COMPACT_LOAD=$((50000 / SCALE))

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

    measured "$s.put_cpu" "$LEADER" --conns "$CONNS" --clients "$CLIENTS" --total "$PUT_TOTAL" \
        put --val-size "$VAL_SIZE" --key-space-size "$KEY_SPACE"
    out=$OUT
    keep "$s.put_rps" higher "$(jq -r .rps <<<"$out")"
    keep "$s.put_p99" lower "$(jq -r .p99_ms <<<"$out")"
    keep "$s.put_err" higher "$(jq -r .errors <<<"$out")"

    # The key the range workloads read: "00000000", 256 bytes.
    bench "$LEADER" --total 1 put --val-size "$VAL_SIZE" --sequential-keys >/dev/null
    for c in l s; do
        measured "$s.range_${c}_cpu" "$ENDPOINTS" --conns "$CONNS" --clients "$CLIENTS" --total "$RANGE_TOTAL" \
            range 00000000 --consistency "$c"
        out=$OUT
        keep "$s.range_${c}_rps" higher "$(jq -r .rps <<<"$out")"
        keep "$s.range_${c}_p99" lower "$(jq -r .p99_ms <<<"$out")"
        keep "$s.range_${c}_err" higher "$(jq -r .errors <<<"$out")"
    done

    # Puts sent to a member that lost the lead are forwarded, so a change
    # skews the figures without failing them: worth a note.
    [[ $(leader) == "$LEADER" ]] || log "$s: the leader changed during the round"
    stop_servers
}

# raft_term ENDPOINT: the member's raft term (one more for each election).
raft_term() {
    "$CTL" endpoint status --endpoints "$1" -w json 2>/dev/null | jq -r '.[0].Status.header.raft_term // empty'
}

# measure_compaction etcd|raftkv ROUND: a history of COMPACT_REVS puts, then
# the same put load (100 clients) twice: alone, and right after a Compact of
# the whole history. Both servers answer a Compact once it is recorded and
# remove the revisions in the background, in batches with pauses, so the
# second load runs while the member deletes. Figures: each load's p99, their
# ratio (the bar: within 2x), and the elections the compaction caused.
measure_compaction() {
    local s=$1 round=$2 out quiet during rev term0 term1
    log "$s: compaction of $COMPACT_REVS revisions under a put load"
    start_cluster "$s" "compaction-$round" || return 0
    out=$(bench "$LEADER" --conns "$CONNS" --clients "$CLIENTS" --total "$COMPACT_REVS" \
        put --val-size "$VAL_SIZE" --key-space-size "$KEY_SPACE")
    keep "$s.history_err" higher "$(jq -r .errors <<<"$out")"
    out=$(bench "$LEADER" --conns 10 --clients 100 --total "$COMPACT_LOAD" \
        put --val-size "$VAL_SIZE" --key-space-size "$KEY_SPACE")
    quiet=$(jq -r .p99_ms <<<"$out")
    keep "$s.quiet_p99" lower "$quiet"
    keep "$s.quiet_err" higher "$(jq -r .errors <<<"$out")"
    rev=$("$CTL" endpoint status --endpoints "$LEADER" -w json | jq -r '.[0].Status.header.revision')
    term0=$(raft_term "$LEADER")
    "$CTL" --endpoints "$LEADER" --command-timeout 60s compaction "$rev" >/dev/null ||
        { log "$s: compaction failed"; stop_servers; return 0; }
    out=$(bench "$LEADER" --conns 10 --clients 100 --total "$COMPACT_LOAD" \
        put --val-size "$VAL_SIZE" --key-space-size "$KEY_SPACE")
    during=$(jq -r .p99_ms <<<"$out")
    keep "$s.during_p99" lower "$during"
    keep "$s.during_err" higher "$(jq -r .errors <<<"$out")"
    if [[ $quiet != null && $during != null ]]; then
        keep "$s.compaction_slowdown" lower "$(awk -v d="$during" -v q="$quiet" 'BEGIN { printf "%.2f", d / q }')"
    fi
    # Most elections over the rounds: any is a miss.
    term1=$(raft_term "$(leader)")
    [[ -n $term0 && -n $term1 ]] && keep "$s.compaction_elections" higher $((term1 - term0))
    stop_servers
}

run_rounds measure
[[ ${BENCH_COMPACTION:-1} == 1 ]] && run_rounds measure_compaction

CC="$CLIENTS clients / $CONNS conns"
print_table "$(
    echo "workload|etcd|raftkv|ratio"
    result_row "put, $CC to the leader, ${VAL_SIZE} B (req/s)" put_rps higher put_err
    result_row "put p99 (ms)" put_p99 lower put_err
    result_row "put, server CPU seconds per 10 000 requests (3 members)" put_cpu lower put_err
    result_row "range 1 key, linearizable, $CC to all members (req/s)" range_l_rps higher range_l_err
    result_row "range linearizable p99 (ms)" range_l_p99 lower range_l_err
    result_row "range 1 key, serializable, $CC to all members (req/s)" range_s_rps higher range_s_err
    result_row "range serializable p99 (ms)" range_s_p99 lower range_s_err
    result_row "range linearizable, server CPU seconds per 10 000 requests" range_l_cpu lower range_l_err
    result_row "range serializable, server CPU seconds per 10 000 requests" range_s_cpu lower range_s_err
    if [[ ${BENCH_COMPACTION:-1} == 1 ]]; then
        result_row "put p99, 100 clients, no compaction (ms)" quiet_p99 lower quiet_err
        result_row "put p99, 100 clients, during a compaction of $COMPACT_REVS revisions (ms)" during_p99 lower during_err
        result_row "put p99 during / without the compaction (bar: <= 2)" compaction_slowdown lower during_err
        result_row "elections during the compaction (most in a round; bar: 0)" compaction_elections lower history_err
    fi
)"
