#!/usr/bin/env bash
# Fuzz everything that parses user or file input (cargo-fuzz with libFuzzer; not part of CI's
# time budget): instance names, durations, CIDRs and pools, the registry document, the audit
# log, Vagrant option values, and the MessagePack Terraform sends. Each target starts from the
# seeds in fuzz/seeds/<target>/ and runs for SECONDS (default 60) with debug assertions on
# (integer overflow is a crash). Prints, per target, the executions and the crashes found; a
# crash's input is kept in fuzz/artifacts/<target>/ and must become a unit test.
#
#   benches/fuzz.sh [SECONDS] [TARGET...]
source "$(dirname "$0")/../scripts/lib.sh"
seconds="${1:-60}"
shift || true
if ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz from crates.io"
  cargo install --locked cargo-fuzz
fi
cd "$ROOT/fuzz"
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
# No sanitizer: the code under test is safe Rust, where a panic is the crash; the stable
# toolchain has no AddressSanitizer runtime (-Zsanitizer is nightly-only). The first run builds.
printf '%-20s %14s %10s %8s\n' target executions "exec/s" crashes
total_crashes=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  [ -d "seeds/$t" ] && cp -n "seeds/$t"/* "corpus/$t/" 2>/dev/null || true
  before=$(find "artifacts/$t" -type f | wc -l)
  log="$(mktemp)"
  cargo fuzz run -s none -a "$t" "corpus/$t" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || true
  runs=$(sed -n 's/^Done \([0-9]*\) runs in.*/\1/p' "$log" | tail -n1)
  [ -n "$runs" ] || runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\)/\1/p' "$log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *\([0-9]*\)/\1/p' "$log" | tail -n1)
  crashes=$(( $(find "artifacts/$t" -type f | wc -l) - before ))
  total_crashes=$((total_crashes + crashes))
  printf '%-20s %14s %10s %8s\n' "$t" "${runs:-?}" "${rate:-?}" "$crashes"
  if [ "$crashes" -gt 0 ]; then
    grep -E "panicked at|SUMMARY" "$log" | head -n 3 | sed 's/^/    /'
  fi
  rm -f "$log"
done
echo "crashes in all: $total_crashes (inputs under fuzz/artifacts/)"
[ "$total_crashes" -eq 0 ]
