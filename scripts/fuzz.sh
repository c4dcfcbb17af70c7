#!/usr/bin/env bash
# `make fuzz`: builds the fuzz targets (fuzz/, cargo-fuzz with libFuzzer) and
# runs each for FUZZ_SECONDS (default 60), one after the other, from its seeds
# (raftkv::fuzzing), the inputs kept in fuzz/regressions/<target>/ and the
# corpus earlier runs left in fuzz/corpus/<target>/.
#
#   FUZZ_SECONDS=600 make fuzz                      ten minutes each
#   FUZZ_TARGETS="requests raft_log_tail" make fuzz  only these
#
# A crash, a hang (FUZZ_TIMEOUT seconds for one input) or an input that
# takes more than 4 GiB ends that target's run with the input saved under
# fuzz/artifacts/<target>/; this script goes on with the other targets, then
# names what was found and fails. Fix it, then keep the input as
# fuzz/regressions/<target>/<short name>: `make test` replays every kept input.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${FUZZ_SECONDS:-60}
TIMEOUT=${FUZZ_TIMEOUT:-20}
ALL=$(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' fuzz/Cargo.toml | grep -vx 'raftkv-fuzz' || true)
TARGETS=${FUZZ_TARGETS:-$ALL}
CARGO_FUZZ_VERSION=0.13.2
MAIN_TARGET_DIR=${CARGO_TARGET_DIR:-target}
# The targets' own build (libFuzzer's instrumentation, release with debug
# assertions): its first build takes about 20 minutes, RocksDB again.
FUZZ_TARGET_DIR=${FUZZ_TARGET_DIR:-$MAIN_TARGET_DIR-fuzz}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
# Safe Rust only (the workspace forbids unsafe code), and RocksDB's C++ is
# not instrumented: AddressSanitizer would slow the runs for nothing;
# libFuzzer still finds panics, hangs and runaway memory. Without a
# sanitizer, cargo fuzz passes rustc no unstable flag: the project's stable
# toolchain builds the targets.
# No `--cfg fuzzing` either: the targets do not use it, and it makes the
# vendored h2 (a path dependency, so its lints apply) build a fuzz module
# that its own deny(missing_docs) refuses.
FUZZ_FLAGS=(--sanitizer none --no-cfg-fuzzing --target-dir "$FUZZ_TARGET_DIR")

# The seeds, written by the replay test (built as by `make test`).
seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
RAFTKV_FUZZ_SEEDS=$seeds CARGO_TARGET_DIR=$MAIN_TARGET_DIR \
  cargo test -q -p raftkv --test fuzz_regressions -- --ignored write_seeds >/dev/null

cargo fuzz build "${FUZZ_FLAGS[@]}"

found=()
for t in $TARGETS; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  inputs=("fuzz/corpus/$t" "$seeds/$t")
  [ -d "fuzz/regressions/$t" ] && inputs+=("fuzz/regressions/$t")
  echo "fuzz: $t for ${SECONDS_EACH}s"
  if ! cargo fuzz run "${FUZZ_FLAGS[@]}" "$t" "${inputs[@]}" -- \
      -max_total_time="$SECONDS_EACH" -timeout="$TIMEOUT" -rss_limit_mb=4096 -print_final_stats=1; then
    found+=("$t")
  fi
done

if [ ${#found[@]} -gt 0 ]; then
  echo "fuzz: found something in: ${found[*]}" >&2
  for t in "${found[@]}"; do ls -1 "fuzz/artifacts/$t" | sed "s|^|  fuzz/artifacts/$t/|" >&2; done
  echo "fuzz: replay one with: cargo fuzz run ${FUZZ_FLAGS[*]} TARGET INPUT, or keep it as fuzz/regressions/TARGET/NAME" >&2
  echo "fuzz: and run: cargo test -p raftkv --test fuzz_regressions (docs/fuzzing.md)" >&2
  exit 1
fi
echo "fuzz: nothing found in $SECONDS_EACH s per target ($TARGETS)"
