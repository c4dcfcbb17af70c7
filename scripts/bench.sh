#!/usr/bin/env bash
# raftkv against Debian's etcd on this machine, with `raftkvctl bench` as the
# load generator for both. Run by `make bench` after the build;
# scripts/bench-cluster.sh is the three-member counterpart, and both share
# scripts/bench-lib.sh.
#
# Each server is a fresh single member (fsync on, the default for both) with
# its data under one temporary directory, so both write to the same disk. The
# servers run one after the other, never both at once, on loopback ports.
#
# The servers take turns for BENCH_ROUNDS rounds (default 3) and each figure
# is the best a server reached, which damps noise from other load on the
# machine without favouring either side.
#
# Progress goes to stderr; stdout gets the results table, then the same table
# in markdown for docs/benchmarks.md. Ratios read ">= 1.0 means raftkv is as
# good or better": raftkv/etcd for throughput, etcd/raftkv for latency and
# memory. Each put and range workload also gives the server's CPU seconds
# per 10 000 requests (user and system time from /proc, all members).
#
# Knobs (environment): ETCD (etcd binary), CARGO_TARGET_DIR, BENCH_TMPDIR
# (where the data dirs go), BENCH_PORT (client port; peer port is +1),
# BENCH_KEEP=1 (keep data dirs and logs), BENCH_SCALE (divide request counts,
# for a quick smoke run), BENCH_ROUNDS, BENCH_SERVERS (default "etcd raftkv"),
# BENCH_WORKLOAD_TIMEOUT (seconds one workload may take, default 240),
# BENCH_MAINT_MB (the store size of the maintenance figures, default 1024),
# BENCH_WORKLOADS (all, or maintenance, scaling or security alone), BENCH_PLOT_DIR
# (where the scaling figures go: bench-scaling.csv and .svg, default docs/),
# BENCH_VALUES (a file that gets every figure of every round, for medians).
set -euo pipefail

# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

PORT=${BENCH_PORT:-32379}
PEER_PORT=$((PORT + 1))
ENDPOINT=127.0.0.1:$PORT

PUT_TOTAL=$((50000 / SCALE))
LATENCY_TOTAL=$((2000 / SCALE))
RANGE_TOTAL=$((50000 / SCALE))
# Issue 19's memory bar is set at a million keys of 256 B.
MEMORY_KEYS=$((1000000 / SCALE))
WATCHERS=1000
WATCH_PUTS=$((1000 / SCALE))
WATCH_PACED_PUTS=$((500 / SCALE))
LEASE_TOTAL=$((50000 / SCALE))
LOCK_TOTAL=$((2000 / SCALE))
VAL_SIZE=256
KEY_SPACE=100000
# Maintenance: a store of MAINT_MB MiB of 64 KiB values (BENCH_MAINT_MB,
# default 1024), saved, defragmented after deleting half, and restored.
MAINT_MB=$((${BENCH_MAINT_MB:-1024} / SCALE))
MAINT_KEYS=$((MAINT_MB * 16))
ETCDCTL=${ETCDCTL:-/usr/bin/etcdctl}

bench_setup bench

# Ready once a linearizable read succeeds: a leader exists and serves.
member_ready() {
    "$CTL" bench --endpoints "$ENDPOINT" --total 1 --json range bench-ready 2>/dev/null |
        jq -e '.errors == 0 and .requests == 1' >/dev/null 2>&1
}

# start_server etcd|raftkv RUN: a fresh member with its own data dir.
start_server() {
    local which=$1 run=$2
    local dir=$WORK/$which-$run
    # Fresh every round: the data of an earlier round is not reused.
    rm -rf "$dir"
    mkdir -p "$dir"
    spawn_server "$which" "$which" "$dir/server.log" \
        --name bench --data-dir "$dir/data" \
        --listen-client-urls "http://$ENDPOINT" --advertise-client-urls "http://$ENDPOINT" \
        --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
        --initial-cluster "bench=http://127.0.0.1:$PEER_PORT"
    await_ready "$which" member_ready
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/${SERVER_PIDS[0]}/status"; }

# measure etcd|raftkv: every workload against fresh members of one server.
measure() {
    local s=$1 out
    log "$s: put latency, throughput and range"
    start_server "$s" workloads || return 0

    out=$(bench "$ENDPOINT" --conns 1 --clients 1 --total "$LATENCY_TOTAL" \
        put --val-size "$VAL_SIZE" --key-space-size "$KEY_SPACE")
    keep "$s.lat_avg" lower "$(jq -r .avg_ms <<<"$out")"
    keep "$s.lat_p50" lower "$(jq -r .p50_ms <<<"$out")"
    keep "$s.lat_p99" lower "$(jq -r .p99_ms <<<"$out")"
    keep "$s.lat_err" higher "$(jq -r .errors <<<"$out")"

    measured "$s.put_cpu" "$ENDPOINT" --conns 10 --clients 100 --total "$PUT_TOTAL" \
        put --val-size "$VAL_SIZE" --key-space-size "$KEY_SPACE"
    out=$OUT
    keep "$s.put_rps" higher "$(jq -r .rps <<<"$out")"
    keep "$s.put_p99" lower "$(jq -r .p99_ms <<<"$out")"
    keep "$s.put_err" higher "$(jq -r .errors <<<"$out")"

    # The key the range workloads read: "00000000", 256 bytes.
    bench "$ENDPOINT" --total 1 put --val-size "$VAL_SIZE" --sequential-keys >/dev/null
    for c in l s; do
        measured "$s.range_${c}_cpu" "$ENDPOINT" --conns 8 --clients 64 --total "$RANGE_TOTAL" \
            range 00000000 --consistency "$c"
        out=$OUT
        keep "$s.range_${c}_rps" higher "$(jq -r .rps <<<"$out")"
        keep "$s.range_${c}_err" higher "$(jq -r .errors <<<"$out")"
    done
    stop_servers

    log "$s: watch, lease keep-alive and lock"
    start_server "$s" coordination || return 0
    # Every put reaches all $WATCHERS watchers: deliveries per second, and
    # latency from a put's sending to each watcher's event.
    out=$(bench "$ENDPOINT" --conns 10 --clients 10 --total "$WATCH_PUTS" \
        watch --watchers "$WATCHERS" --streams 100)
    keep "$s.watch_rps" higher "$(jq -r .rps <<<"$out")"
    keep "$s.watch_p99" lower "$(jq -r .p99_ms <<<"$out")"
    keep "$s.watch_err" higher "$(jq -r .errors <<<"$out")"
    out=$(bench "$ENDPOINT" --conns 10 --clients 10 --total "$WATCH_PACED_PUTS" \
        watch --watchers "$WATCHERS" --streams 100 --put-rate 100)
    keep "$s.watchlat_p50" lower "$(jq -r .p50_ms <<<"$out")"
    keep "$s.watchlat_p99" lower "$(jq -r .p99_ms <<<"$out")"
    keep "$s.watchlat_err" higher "$(jq -r .errors <<<"$out")"
    out=$(bench "$ENDPOINT" --conns 10 --clients 100 --total "$LEASE_TOTAL" lease-keepalive)
    keep "$s.lease_rps" higher "$(jq -r .rps <<<"$out")"
    keep "$s.lease_err" higher "$(jq -r .errors <<<"$out")"
    out=$(bench "$ENDPOINT" --conns 2 --clients 10 --total "$LOCK_TOTAL" lock)
    keep "$s.lock_rps" higher "$(jq -r .rps <<<"$out")"
    keep "$s.lock_err" higher "$(jq -r .errors <<<"$out")"
    stop_servers

    log "$s: resident memory with $MEMORY_KEYS keys"
    start_server "$s" memory || return 0
    keep "$s.rss_idle" lower "$(rss_kib)"
    out=$(bench "$ENDPOINT" --conns 10 --clients 100 --total "$MEMORY_KEYS" \
        put --val-size "$VAL_SIZE" --sequential-keys --key-space-size "$MEMORY_KEYS")
    keep "$s.load_err" higher "$(jq -r .errors <<<"$out")"
    sleep 2
    keep "$s.rss" lower "$(rss_kib)"
    stop_servers
}

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# measure_maintenance etcd|raftkv: snapshot save throughput, defragment time
# and restore time of a MAINT_MB store. Both servers are saved by raftkvctl
# (an etcd client like any); each file is restored by its own tool
# (etcdctl 3.4 for etcd's, raftkvctl for raftkv's).
measure_maintenance() {
    local s=$1 dir=$WORK/$1-maintenance t0 t1 out rev
    log "$s: snapshot save, defragment and restore with $MAINT_MB MiB"
    rm -rf "$dir"
    start_server "$s" maintenance || return 0
    out=$(bench "$ENDPOINT" --conns 10 --clients 10 --total "$MAINT_KEYS" \
        put --val-size 65536 --sequential-keys --key-space-size "$MAINT_KEYS")
    keep "$s.maint_err" higher "$(jq -r .errors <<<"$out")"
    t0=$(now)
    "$CTL" --endpoints "$ENDPOINT" --command-timeout 600s snapshot save "$dir/snapshot.db" >/dev/null 2>&1 ||
        { log "$s: snapshot save failed"; stop_servers; return 0; }
    t1=$(now)
    keep "$s.save_mbps" higher "$(awk -v mb="$MAINT_MB" -v s="$(secs "$t0" "$t1")" 'BEGIN { printf "%.1f", mb / s }')"
    "$CTL" --endpoints "$ENDPOINT" --command-timeout 600s del 00000000 "$(printf '%08d' $((MAINT_KEYS / 2)))" >/dev/null
    rev=$("$CTL" --endpoints "$ENDPOINT" endpoint status -w json | jq -r '.[0].Status.header.revision')
    "$CTL" --endpoints "$ENDPOINT" --command-timeout 600s compaction --physical "$rev" >/dev/null
    t0=$(now)
    if ! out=$("$CTL" --endpoints "$ENDPOINT" --command-timeout 600s defrag 2>&1); then
        log "$s: defrag failed: $out"
        stop_servers
        return 0
    fi
    t1=$(now)
    keep "$s.defrag_s" lower "$(secs "$t0" "$t1")"
    stop_servers
    t0=$(now)
    if [[ $s == etcd ]]; then
        ETCDCTL_API=3 "$ETCDCTL" snapshot restore "$dir/snapshot.db" --data-dir "$dir/restored" >/dev/null 2>&1
    else
        "$CTL" snapshot restore "$dir/snapshot.db" --data-dir "$dir/restored" >/dev/null 2>&1
    fi || { log "$s: restore failed"; return 0; }
    t1=$(now)
    keep "$s.restore_s" lower "$(secs "$t0" "$t1")"
    rm -rf "$dir"
}

# The endpoint of the security workloads (https with TLS).
SEC_EP=http://$ENDPOINT

secure_ready() {
    "$CTL" "${CTL_FLAGS[@]}" bench --endpoints "$SEC_EP" --total 1 --json range bench-ready 2>/dev/null |
        jq -e '.errors == 0 and .requests == 1' >/dev/null 2>&1
}

# start_secure etcd|raftkv plain|tls|auth: a fresh member in plaintext, or serving https with a
# certificate of its own (--auto-tls, both servers' generator), or plain
# http with authentication enabled for a user "bench" with readwrite on
# every key the workloads touch (simple tokens, bcrypt cost 10, both
# defaults): what a client pays for each.
start_secure() {
    local which=$1 mode=$2 dir=$WORK/$1-$2 scheme=http extra=()
    rm -rf "$dir"
    mkdir -p "$dir"
    CTL_FLAGS=()
    if [[ $mode == tls ]]; then
        scheme=https
        extra=(--auto-tls)
        CTL_FLAGS=(--insecure-skip-tls-verify)
    fi
    SEC_EP=$scheme://$ENDPOINT
    spawn_server "$which" "$which" "$dir/server.log" \
        --name bench --data-dir "$dir/data" \
        --listen-client-urls "$SEC_EP" --advertise-client-urls "$SEC_EP" \
        --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
        --initial-cluster "bench=http://127.0.0.1:$PEER_PORT" "${extra[@]}"
    await_ready "$which" secure_ready || return 1
    if [[ $mode == auth ]]; then
        local cmd
        for cmd in "user add root:rootpw" "user grant-role root root" "user add bench:benchpw" "role add bench" \
            "role grant-permission bench --from-key=true readwrite 0" "user grant-role bench bench" "auth enable"; do
            # shellcheck disable=SC2086
            "$CTL" --endpoints "$SEC_EP" $cmd >/dev/null || { log "$which: $cmd failed"; stop_servers; return 1; }
        done
        CTL_FLAGS=(--user bench:benchpw)
    fi
}

# measure_security etcd|raftkv: linearizable range and put throughput in
# plaintext, over TLS, then with authentication, each on a fresh member in
# the same round (the ratios to compare are those of one run).
measure_security() {
    local s=$1 mode out
    for mode in plain tls auth; do
        log "$s: range and put with $mode"
        start_secure "$s" "$mode" || { CTL_FLAGS=(); continue; }
        # Ranges first, on the fresh member: etcd 3.4 copies its backend's
        # read buffer for every range, a buffer that grows with the puts
        # of each 100 ms batch before it, so ranges after the put workload
        # would be measured against each mode's put rate (docs/benchmarks.md,
        # "Issue 17: session 21").
        bench "$SEC_EP" --total 1 put --val-size "$VAL_SIZE" --sequential-keys >/dev/null
        measured "$s.${mode}_range_cpu" "$SEC_EP" --conns 8 --clients 64 --total "$RANGE_TOTAL" \
            range 00000000 --consistency l
        out=$OUT
        keep "$s.${mode}_range_rps" higher "$(jq -r .rps <<<"$out")"
        keep "$s.${mode}_range_err" higher "$(jq -r .errors <<<"$out")"
        measured "$s.${mode}_put_cpu" "$SEC_EP" --conns 10 --clients 100 --total "$PUT_TOTAL" \
            put --val-size "$VAL_SIZE" --key-space-size "$KEY_SPACE"
        out=$OUT
        keep "$s.${mode}_put_rps" higher "$(jq -r .rps <<<"$out")"
        keep "$s.${mode}_put_err" higher "$(jq -r .errors <<<"$out")"
        stop_servers
        CTL_FLAGS=()
    done
}

# Client counts of the scaling figures, and the puts each makes.
SCALING_CLIENTS="1 10 100 1000"
scaling_total() { case $1 in 1) echo $((2000 / SCALE)) ;; 10) echo $((10000 / SCALE)) ;; *) echo $((50000 / SCALE)) ;; esac; }

# measure_scaling etcd|raftkv: put throughput and p99 at each client count
# (up to 100 connections), on a fresh member, for the plot.
measure_scaling() {
    local s=$1 n out
    log "$s: put throughput and p99 against the number of clients"
    start_server "$s" scaling || return 0
    for n in $SCALING_CLIENTS; do
        out=$(bench "$ENDPOINT" --conns $((n < 100 ? n : 100)) --clients "$n" --total "$(scaling_total "$n")" \
            put --val-size "$VAL_SIZE" --key-space-size "$KEY_SPACE")
        keep "$s.scale${n}_rps" higher "$(jq -r .rps <<<"$out")"
        keep "$s.scale${n}_p99" lower "$(jq -r .p99_ms <<<"$out")"
        keep "$s.scale${n}_err" higher "$(jq -r .errors <<<"$out")"
    done
    stop_servers
}

# BENCH_WORKLOADS: "all" (default), "maintenance", "scaling" or "security" alone.
case ${BENCH_WORKLOADS:-all} in
    all) run_rounds measure; run_rounds measure_maintenance; run_rounds measure_scaling; run_rounds measure_security ;;
    maintenance) run_rounds measure_maintenance ;;
    scaling) run_rounds measure_scaling ;;
    security) run_rounds measure_security ;;
    *) echo "bench: BENCH_WORKLOADS is all, maintenance, scaling or security" >&2; exit 2 ;;
esac

# The scaling figures as CSV, and their plot (BENCH_PLOT_DIR, default
# docs/): throughput and p99 against the number of clients, both servers.
if [[ ${BENCH_WORKLOADS:-all} == all || ${BENCH_WORKLOADS:-all} == scaling ]]; then
    PLOT_DIR=${BENCH_PLOT_DIR:-$(dirname "$0")/../docs}
    {
        echo "server,clients,rps,p99_ms"
        for s in $SERVERS; do
            for n in $SCALING_CLIENTS; do
                echo "$s,$n,${R[$s.scale${n}_rps]:-},${R[$s.scale${n}_p99]:-}"
            done
        done
    } >"$PLOT_DIR/bench-scaling.csv"
    python3 "$(dirname "$0")/bench-plot.py" "$PLOT_DIR/bench-scaling.csv" "$PLOT_DIR/bench-scaling.svg" &&
        log "plot written to $PLOT_DIR/bench-scaling.svg"
fi

mib() { [[ -n ${1:-} ]] && awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

print_table "$(
    echo "workload|etcd|raftkv|ratio"
    result_row "put throughput, 100 clients / 10 conns, ${VAL_SIZE} B (req/s)" put_rps higher put_err
    result_row "put p99, 100 clients (ms)" put_p99 lower put_err
    for n in $SCALING_CLIENTS; do
        result_row "put, $n clients (req/s)" "scale${n}_rps" higher "scale${n}_err"
        result_row "put p99, $n clients (ms)" "scale${n}_p99" lower "scale${n}_err"
    done
    result_row "put, server CPU seconds per 10 000 requests" put_cpu lower put_err
    result_row "put latency, 1 client, average (ms)" lat_avg lower lat_err
    result_row "put latency, 1 client, p50 (ms)" lat_p50 lower lat_err
    result_row "put latency, 1 client, p99 (ms)" lat_p99 lower lat_err
    result_row "range 1 key, linearizable, 64 clients (req/s)" range_l_rps higher range_l_err
    result_row "range 1 key, serializable, 64 clients (req/s)" range_s_rps higher range_s_err
    result_row "range linearizable, server CPU seconds per 10 000 requests" range_l_cpu lower range_l_err
    result_row "range serializable, server CPU seconds per 10 000 requests" range_s_cpu lower range_s_err
    result_row "put, the security round's plaintext, 100 clients (req/s)" plain_put_rps higher plain_put_err
    result_row "range linearizable, the security round's plaintext, 64 clients (req/s)" plain_range_rps higher plain_range_err
    result_row "put over TLS, 100 clients / 10 conns (req/s)" tls_put_rps higher tls_put_err
    result_row "range 1 key, linearizable, over TLS, 64 clients (req/s)" tls_range_rps higher tls_range_err
    result_row "put with authentication (a user's token), 100 clients (req/s)" auth_put_rps higher auth_put_err
    result_row "range 1 key, linearizable, with authentication, 64 clients (req/s)" auth_range_rps higher auth_range_err
    result_row "put over TLS, server CPU seconds per 10 000 requests" tls_put_cpu lower tls_put_err
    result_row "put with authentication, server CPU seconds per 10 000 requests" auth_put_cpu lower auth_put_err
    result_row "watch: deliveries to ${WATCHERS} watchers, 10 putters (events/s)" watch_rps higher watch_err
    result_row "watch: delivery p99, 10 putters (ms)" watch_p99 lower watch_err
    result_row "watch: delivery p50, 100 puts/s (ms)" watchlat_p50 lower watchlat_err
    result_row "watch: delivery p99, 100 puts/s (ms)" watchlat_p99 lower watchlat_err
    result_row "lease keep-alive, 100 clients (req/s)" lease_rps higher lease_err
    result_row "lock + unlock, 10 clients on one lock (req/s)" lock_rps higher lock_err
    result_row "snapshot save, ${MAINT_MB} MiB of 64 KiB values (MiB/s)" save_mbps higher maint_err
    result_row "defragment after deleting and compacting half (s)" defrag_s lower maint_err
    result_row "snapshot restore, ${MAINT_MB} MiB (s)" restore_s lower maint_err
    row "RSS idle, fresh member (MiB)" \
        "$(mib "${R[etcd.rss_idle]:-}")" "$(mib "${R[raftkv.rss_idle]:-}")" lower
    row "RSS after ${MEMORY_KEYS} keys x ${VAL_SIZE} B (MiB)" \
        "$(mib "${R[etcd.rss]:-}")" "$(mib "${R[raftkv.rss]:-}")" lower "${R[etcd.load_err]:-0}" "${R[raftkv.load_err]:-0}"
)"
