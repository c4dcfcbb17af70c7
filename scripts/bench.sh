#!/usr/bin/env bash
# raftkv against Debian's etcd on this machine, with `raftkvctl bench` as the
# load generator for both. Run by `make bench` after the build.
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
# memory.
#
# Knobs (environment): ETCD (etcd binary), CARGO_TARGET_DIR, BENCH_TMPDIR
# (where the data dirs go), BENCH_PORT (client port; peer port is +1),
# BENCH_KEEP=1 (keep data dirs and logs), BENCH_SCALE (divide request counts,
# for a quick smoke run), BENCH_ROUNDS, BENCH_SERVERS (default "etcd raftkv"),
# BENCH_WORKLOAD_TIMEOUT (seconds one workload may take, default 240).
set -euo pipefail

ETCD=${ETCD:-/usr/bin/etcd}
BIN=${CARGO_TARGET_DIR:-target}/debug
RAFTKV=$BIN/raftkv
CTL=$BIN/raftkvctl
PORT=${BENCH_PORT:-32379}
PEER_PORT=$((PORT + 1))
ENDPOINT=127.0.0.1:$PORT
SCALE=${BENCH_SCALE:-1}
ROUNDS=${BENCH_ROUNDS:-3}
# One workload may not run longer than this (seconds); a hang must not stall the run.
WORKLOAD_TIMEOUT=${BENCH_WORKLOAD_TIMEOUT:-240}

PUT_TOTAL=$((50000 / SCALE))
LATENCY_TOTAL=$((2000 / SCALE))
RANGE_TOTAL=$((50000 / SCALE))
MEMORY_KEYS=$((100000 / SCALE))
VAL_SIZE=256
KEY_SPACE=100000

SERVERS=${BENCH_SERVERS:-etcd raftkv}

need=("$CTL")
[[ " $SERVERS " == *" etcd "* ]] && need+=("$ETCD")
[[ " $SERVERS " == *" raftkv "* ]] && need+=("$RAFTKV")
for bin in "${need[@]}"; do
    [[ -x $bin ]] || { echo "bench: $bin not found; run 'make build' (or set ETCD)" >&2; exit 1; }
done

WORK=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/raftkv-bench.XXXXXX")
SERVER_PID=

stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}

cleanup() {
    stop_server
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        echo "bench: data and logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "bench: $*" >&2; }

# start_server etcd|raftkv RUN: a fresh member with its own data dir.
start_server() {
    local which=$1 run=$2 bin
    case $which in
        etcd) bin=$ETCD ;;
        raftkv) bin=$RAFTKV ;;
    esac
    local dir=$WORK/$which-$run
    mkdir -p "$dir"
    "$bin" --name bench --data-dir "$dir/data" \
        --listen-client-urls "http://$ENDPOINT" --advertise-client-urls "http://$ENDPOINT" \
        --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
        --initial-cluster "bench=http://127.0.0.1:$PEER_PORT" \
        >"$dir/server.log" 2>&1 &
    SERVER_PID=$!
    # Ready once a linearizable read succeeds: a leader exists and serves.
    for _ in $(seq 1 100); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "$which exited during startup; last log lines:"
            tail -n 20 "$dir/server.log" >&2
            SERVER_PID=
            return 1
        fi
        if "$CTL" bench --endpoints "$ENDPOINT" --total 1 --json range bench-ready 2>/dev/null |
            jq -e '.errors == 0 and .requests == 1' >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    log "$which did not become ready in 20s; last log lines:"
    tail -n 20 "$dir/server.log" >&2
    return 1
}

# bench ARGS...: one workload against the running server, its JSON line on stdout.
bench() {
    log "  raftkvctl bench $*"
    local out
    out=$(timeout "$WORKLOAD_TIMEOUT" "$CTL" bench --endpoints "$ENDPOINT" --json "$@") ||
        out='{"requests":0,"errors":-1,"rps":null,"avg_ms":null,"p50_ms":null,"p99_ms":null}'
    log "    $out"
    echo "$out"
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status"; }

# Results, keyed by "<server>.<figure>": the best over the rounds so far.
declare -A R

# keep KEY higher|lower VALUE: record VALUE if it beats what KEY holds. A
# failed run (null) or a latency of 0 (no request succeeded) is no figure.
keep() {
    local key=$1 better=$2 value=$3 old=${R[$1]:-}
    [[ -z $value || $value == null ]] && return 0
    [[ $better == lower && $value == 0 ]] && return 0
    if [[ -z $old ]] || awk -v n="$value" -v o="$old" -v b="$better" \
        'BEGIN { exit !(b == "higher" ? n > o : n < o) }'; then
        R[$key]=$value
    fi
}

# measure etcd|raftkv: every workload against fresh members of one server.
measure() {
    local s=$1 out
    log "$s: put latency, throughput and range"
    start_server "$s" workloads || return 0

    out=$(bench --conns 1 --clients 1 --total "$LATENCY_TOTAL" \
        put --val-size "$VAL_SIZE" --key-space-size "$KEY_SPACE")
    keep "$s.lat_avg" lower "$(jq -r .avg_ms <<<"$out")"
    keep "$s.lat_p50" lower "$(jq -r .p50_ms <<<"$out")"
    keep "$s.lat_p99" lower "$(jq -r .p99_ms <<<"$out")"
    keep "$s.lat_err" higher "$(jq -r .errors <<<"$out")"

    out=$(bench --conns 10 --clients 100 --total "$PUT_TOTAL" \
        put --val-size "$VAL_SIZE" --key-space-size "$KEY_SPACE")
    keep "$s.put_rps" higher "$(jq -r .rps <<<"$out")"
    keep "$s.put_p99" lower "$(jq -r .p99_ms <<<"$out")"
    keep "$s.put_err" higher "$(jq -r .errors <<<"$out")"

    # The key the range workloads read: "00000000", 256 bytes.
    bench --total 1 put --val-size "$VAL_SIZE" --sequential-keys >/dev/null
    for c in l s; do
        out=$(bench --conns 8 --clients 64 --total "$RANGE_TOTAL" \
            range 00000000 --consistency "$c")
        keep "$s.range_${c}_rps" higher "$(jq -r .rps <<<"$out")"
        keep "$s.range_${c}_err" higher "$(jq -r .errors <<<"$out")"
    done
    stop_server

    log "$s: resident memory with $MEMORY_KEYS keys"
    start_server "$s" memory || return 0
    keep "$s.rss_idle" lower "$(rss_kib)"
    out=$(bench --conns 10 --clients 100 --total "$MEMORY_KEYS" \
        put --val-size "$VAL_SIZE" --sequential-keys --key-space-size "$MEMORY_KEYS")
    keep "$s.load_err" higher "$(jq -r .errors <<<"$out")"
    sleep 2
    keep "$s.rss" lower "$(rss_kib)"
    stop_server
}

for round in $(seq 1 "$ROUNDS"); do
    for s in $SERVERS; do
        log "round $round of $ROUNDS"
        measure "$s"
    done
done

# row NAME ETCD RAFTKV higher|lower ERRKEY: one table row, '|' separated.
# The ratio is raftkv/etcd when higher is better, etcd/raftkv when lower is.
row() {
    local name=$1 e=${2:-} r=${3:-} better=$4 ee=${5:-0} re=${6:-0}
    awk -v name="$name" -v e="$e" -v r="$r" -v better="$better" -v ee="$ee" -v re="$re" '
        function cell(v, err) {
            if (v == "") return err < 0 ? "failed" : "n/a"
            s = sprintf(v >= 100 ? "%.0f" : "%.2f", v)
            if (err != 0) s = s " (" (err < 0 ? "failed" : err " errors") ")"
            return s
        }
        BEGIN {
            ratio = "n/a"
            if (e != "" && r != "" && e > 0 && r > 0)
                ratio = sprintf("%.2f", better == "higher" ? r / e : e / r)
            printf "%s|%s|%s|%s\n", name, cell(e, ee), cell(r, re), ratio
        }'
}

mib() { [[ -n ${1:-} ]] && awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

ROWS=$(
    echo "workload|etcd|raftkv|ratio"
    row "put throughput, 100 clients / 10 conns, ${VAL_SIZE} B (req/s)" \
        "${R[etcd.put_rps]:-}" "${R[raftkv.put_rps]:-}" higher "${R[etcd.put_err]:-0}" "${R[raftkv.put_err]:-0}"
    row "put p99, 100 clients (ms)" \
        "${R[etcd.put_p99]:-}" "${R[raftkv.put_p99]:-}" lower "${R[etcd.put_err]:-0}" "${R[raftkv.put_err]:-0}"
    row "put latency, 1 client, average (ms)" \
        "${R[etcd.lat_avg]:-}" "${R[raftkv.lat_avg]:-}" lower "${R[etcd.lat_err]:-0}" "${R[raftkv.lat_err]:-0}"
    row "put latency, 1 client, p50 (ms)" \
        "${R[etcd.lat_p50]:-}" "${R[raftkv.lat_p50]:-}" lower "${R[etcd.lat_err]:-0}" "${R[raftkv.lat_err]:-0}"
    row "put latency, 1 client, p99 (ms)" \
        "${R[etcd.lat_p99]:-}" "${R[raftkv.lat_p99]:-}" lower "${R[etcd.lat_err]:-0}" "${R[raftkv.lat_err]:-0}"
    row "range 1 key, linearizable, 64 clients (req/s)" \
        "${R[etcd.range_l_rps]:-}" "${R[raftkv.range_l_rps]:-}" higher "${R[etcd.range_l_err]:-0}" "${R[raftkv.range_l_err]:-0}"
    row "range 1 key, serializable, 64 clients (req/s)" \
        "${R[etcd.range_s_rps]:-}" "${R[raftkv.range_s_rps]:-}" higher "${R[etcd.range_s_err]:-0}" "${R[raftkv.range_s_err]:-0}"
    row "RSS idle, fresh member (MiB)" \
        "$(mib "${R[etcd.rss_idle]:-}")" "$(mib "${R[raftkv.rss_idle]:-}")" lower
    row "RSS after ${MEMORY_KEYS} keys x ${VAL_SIZE} B (MiB)" \
        "$(mib "${R[etcd.rss]:-}")" "$(mib "${R[raftkv.rss]:-}")" lower "${R[etcd.load_err]:-0}" "${R[raftkv.load_err]:-0}"
)

echo
column -t -s '|' <<<"$ROWS"
echo
awk -F'|' 'NR == 1 { print "| " $1 " | " $2 " | " $3 " | " $4 " |"; print "|---|---:|---:|---:|"; next }
           { print "| " $1 " | " $2 " | " $3 " | " $4 " |" }' <<<"$ROWS"
