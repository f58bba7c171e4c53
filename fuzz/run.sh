#!/usr/bin/env bash
# Runs AFL++ on each TARGET for SECONDS, one after the other, on one core, from the
# committed seed corpus; prints afl-fuzz's figures per target and fails if any target
# crashed (the crashing inputs are copied to target/fuzz/crashes/TARGET/).
# Usage: fuzz/run.sh SECONDS TARGET...   (`make fuzz` / `make test-fuzz` call it)
set -euo pipefail
seconds=$1
shift
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin_dir=$repo/target/afl/release
out_root=$repo/target/fuzz

# Root in CI: no cpufreq governor to check, and a core_pattern piped to a handler is left
# as it is (the crash is still seen through the exit signal). No CPU pinning: the machine
# is shared. No UI: logs, not a terminal.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 AFL_NO_UI=1
export AFL_FAST_CAL=1 AFL_NO_STARTUP_CALIBRATION=1

stat() { sed -n "s/^$2 *: *//p" "$1" | head -n 1; }

failed=()
crashed=()
printf '%-15s %8s %10s %9s %7s %7s %9s\n' target seconds execs execs/s corpus crashes stability
for target in "$@"; do
  bin=$bin_dir/$target
  [ -x "$bin" ] || { echo "fuzz: $bin missing (make fuzz-build)" >&2; exit 1; }
  out=$out_root/$target
  work=$out_root/work/$target
  rm -rf "$out" "$work"
  mkdir -p "$out" "$work"
  # The harnesses put their scratch directories in TMPDIR: under target/, removed here.
  chmod 0777 "$work"
  log=$out_root/$target.log
  start=$(date +%s)
  if ! TMPDIR=$work cargo afl fuzz -i "$repo/fuzz/corpus/$target" -o "$out" -V "$seconds" -t 2000 -- "$bin" \
      >"$log" 2>&1; then
    echo "fuzz: afl-fuzz failed on $target; the end of $log:" >&2
    tail -n 30 "$log" >&2
    failed+=("$target")
    continue
  fi
  stats=$out/default/fuzzer_stats
  crashes=$(stat "$stats" saved_crashes)
  printf '%-15s %8s %10s %9s %7s %7s %9s\n' "$target" "$(( $(date +%s) - start ))" "$(stat "$stats" execs_done)" \
    "$(stat "$stats" execs_per_sec)" "$(stat "$stats" corpus_count)" "$crashes" "$(stat "$stats" stability)"
  if [ "${crashes:-0}" != 0 ]; then
    mkdir -p "$out_root/crashes/$target"
    cp "$out"/default/crashes/id:* "$out_root/crashes/$target/"
    crashed+=("$target")
  fi
  rm -rf "$work"
done
if [ ${#crashed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${crashed[*]}" >&2
  echo "  inputs: $out_root/crashes/TARGET/; replay one: $bin_dir/TARGET < FILE;" >&2
  echo "  once fixed, commit it under fuzz/regressions/TARGET/ (docs/testing.md, Fuzzing)" >&2
  for target in "${crashed[@]}"; do
    for input in "$out_root/crashes/$target"/id:*; do
      echo "  $target $(basename "$input") (base64): $(base64 -w0 "$input")" >&2
    done
  done
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: afl-fuzz itself failed on: ${failed[*]}" >&2
  exit 1
fi
# A crash found now is new (known ones are replayed by `cargo test` from fuzz/regressions):
# `make fuzz` fails on it; the short run of `make test` (FUZZ_CRASHES_FAIL=0) reports it, with
# the input, without making an unrelated change's CI red by chance.
if [ ${#crashed[@]} -gt 0 ] && [ "${FUZZ_CRASHES_FAIL:-1}" != 0 ]; then
  exit 1
fi
