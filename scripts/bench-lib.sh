# What scripts/bench.sh (one member) and scripts/bench-cluster.sh (three
# members) share: binaries and common knobs, server processes, the
# `raftkvctl bench` wrapper, best-of-rounds bookkeeping and the results
# table. Sourced, never run; the caller sets `set -euo pipefail`, calls
# bench_setup, and owns its workloads, ports and table rows.
#
# Common knobs (environment): ETCD (etcd binary), CARGO_TARGET_DIR,
# BENCH_TMPDIR (where the data dirs go), BENCH_KEEP=1 (keep data dirs and
# logs), BENCH_SCALE (divide request counts, for a quick smoke run),
# BENCH_ROUNDS (default 3), BENCH_SERVERS (default "etcd raftkv"),
# BENCH_WORKLOAD_TIMEOUT (seconds one workload may take, default 240).

ETCD=${ETCD:-/usr/bin/etcd}
BIN=${CARGO_TARGET_DIR:-target}/debug
RAFTKV=$BIN/raftkv
CTL=$BIN/raftkvctl
SCALE=${BENCH_SCALE:-1}
ROUNDS=${BENCH_ROUNDS:-3}
# One workload may not run longer than this (seconds); a hang must not stall the run.
WORKLOAD_TIMEOUT=${BENCH_WORKLOAD_TIMEOUT:-240}
SERVERS=${BENCH_SERVERS:-etcd raftkv}

# The members running now: pid, a label for messages, and the log file.
SERVER_PIDS=()
SERVER_LABELS=()
SERVER_LOGS=()

log() { echo "bench: $*" >&2; }

# bench_setup NAME: checks the binaries, makes WORK, the temporary directory
# for every data dir and log (raftkv-NAME.XXXXXX), and cleans up on exit.
bench_setup() {
    local need=("$CTL") bin
    [[ " $SERVERS " == *" etcd "* ]] && need+=("$ETCD")
    [[ " $SERVERS " == *" raftkv "* ]] && need+=("$RAFTKV")
    for bin in "${need[@]}"; do
        [[ -x $bin ]] || { echo "bench: $bin not found; run 'make build' (or set ETCD)" >&2; exit 1; }
    done
    WORK=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/raftkv-$1.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

cleanup() {
    stop_servers
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        echo "bench: data and logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}

# spawn_server etcd|raftkv LABEL LOG FLAGS...: one member in the background,
# its output in LOG. Both servers take etcd's flags.
spawn_server() {
    local which=$1 label=$2 log_file=$3 bin
    shift 3
    case $which in
        etcd) bin=$ETCD ;;
        raftkv) bin=$RAFTKV ;;
    esac
    "$bin" "$@" >"$log_file" 2>&1 &
    SERVER_PIDS+=($!)
    SERVER_LABELS+=("$label")
    SERVER_LOGS+=("$log_file")
}

# stop_servers: every running member gets SIGTERM, then 10 s before SIGKILL.
stop_servers() {
    local pid
    for pid in "${SERVER_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${SERVER_PIDS[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    SERVER_PIDS=()
    SERVER_LABELS=()
    SERVER_LOGS=()
}

# await_ready WHAT CHECK...: runs CHECK every 0.2 s until it succeeds, for up
# to 20 s, as long as every member is alive. On failure the members' last
# log lines go to stderr and every member is stopped.
await_ready() {
    local what=$1 i
    shift
    for _ in $(seq 1 100); do
        for i in "${!SERVER_PIDS[@]}"; do
            if ! kill -0 "${SERVER_PIDS[$i]}" 2>/dev/null; then
                log "${SERVER_LABELS[$i]} exited during startup; last log lines:"
                tail -n 20 "${SERVER_LOGS[$i]}" >&2
                stop_servers
                return 1
            fi
        done
        "$@" && return 0
        sleep 0.2
    done
    log "$what did not become ready in 20s; last log lines:"
    for i in "${!SERVER_LOGS[@]}"; do
        ((${#SERVER_LOGS[@]} == 1)) || log "${SERVER_LABELS[$i]}:"
        tail -n 20 "${SERVER_LOGS[$i]}" >&2
    done
    stop_servers
    return 1
}

# bench ENDPOINTS ARGS...: one workload (comma-separated ENDPOINTS, the
# connections spread over them in turn), its JSON line on stdout. A run that
# fails or outlives WORKLOAD_TIMEOUT gives nulls and errors -1.
# Global raftkvctl flags of every bench run (TLS, --user): set by a workload.
CTL_FLAGS=()

bench() {
    local endpoints=$1 out
    shift
    log "  raftkvctl bench $*"
    out=$(timeout "$WORKLOAD_TIMEOUT" "$CTL" "${CTL_FLAGS[@]}" bench --endpoints "$endpoints" --json "$@") ||
        out='{"requests":0,"errors":-1,"rps":null,"avg_ms":null,"p50_ms":null,"p99_ms":null}'
    log "    $out"
    echo "$out"
}

CLK_TCK=$(getconf CLK_TCK)

# cpu_ticks: the CPU time (user and system, in clock ticks) every running
# member has used so far, from /proc. The figure least shaken by other
# load on the machine.
cpu_ticks() {
    local pid t total=0
    for pid in "${SERVER_PIDS[@]}"; do
        # After the command name (which may hold spaces and parentheses),
        # utime and stime are the 12th and 13th fields.
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null) || t=0
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

# cpu_per_10k BEFORE AFTER OUT: the members' CPU seconds per 10 000
# requests of the workload whose JSON line is OUT, from cpu_ticks before and
# after it.
cpu_per_10k() {
    jq -r --argjson b "$1" --argjson a "$2" --argjson hz "$CLK_TCK" \
        'if (.requests // 0) > 0 then (($a - $b) / $hz / .requests * 10000 * 1000 | round / 1000) else null end' <<<"$3"
}

# measured KEY ENDPOINTS ARGS...: runs one workload (as bench), keeps the
# members' CPU seconds per 10 000 of its requests under KEY, and leaves its
# JSON line in OUT (not on stdout: keep must run in this shell).
measured() {
    local key=$1 before
    shift
    before=$(cpu_ticks)
    OUT=$(bench "$@")
    keep "$key" lower "$(cpu_per_10k "$before" "$(cpu_ticks)" "$OUT")"
}

# run_rounds MEASURE: MEASURE SERVER ROUND for every server in turn, for
# ROUNDS rounds, so that load from elsewhere hits both alike.
run_rounds() {
    local round s
    for round in $(seq 1 "$ROUNDS"); do
        for s in $SERVERS; do
            log "round $round of $ROUNDS"
            "$1" "$s" "$round"
        done
    done
}

# Results, keyed by "<server>.<figure>": the best over the rounds so far.
declare -A R

# keep KEY higher|lower VALUE: record VALUE if it beats what KEY holds. A
# failed run (null) or a latency of 0 (no request succeeded) is no figure.
keep() {
    local key=$1 better=$2 value=$3 old=${R[$1]:-}
    [[ -z $value || $value == null ]] && return 0
    # BENCH_VALUES=FILE: every figure of every round, "KEY VALUE" a line,
    # for medians over alternating rounds (the table keeps the best).
    [[ -n ${BENCH_VALUES:-} ]] && echo "$key $value" >>"$BENCH_VALUES"
    [[ $better == lower && $value == 0 ]] && return 0
    if [[ -z $old ]] || awk -v n="$value" -v o="$old" -v b="$better" \
        'BEGIN { exit !(b == "higher" ? n > o : n < o) }'; then
        R[$key]=$value
    fi
}

# row NAME ETCD RAFTKV higher|lower ETCD_ERRORS RAFTKV_ERRORS: one table row,
# '|' separated. The ratio is raftkv/etcd when higher is better, etcd/raftkv
# when lower is.
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

# result_row NAME FIGURE higher|lower [ERRORS]: the row for one kept figure of
# both servers, with the error counts kept under ERRORS.
result_row() {
    local figure=$2 errors=${4:-}
    row "$1" "${R[etcd.$figure]:-}" "${R[raftkv.$figure]:-}" "$3" \
        "${R[etcd.$errors]:-0}" "${R[raftkv.$errors]:-0}"
}

# print_table ROWS: the '|'-separated rows (a header first) aligned, then the
# same table in markdown for docs/benchmarks.md.
print_table() {
    echo
    column -t -s '|' <<<"$1"
    echo
    awk -F'|' 'NR == 1 { print "| " $1 " | " $2 " | " $3 " | " $4 " |"; print "|---|---:|---:|---:|"; next }
               { print "| " $1 " | " $2 " | " $3 " | " $4 " |" }' <<<"$1"
}
