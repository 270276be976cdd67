#!/usr/bin/env bash
# single-run.sh: one `ctr run --rm ... /bin/true` at a time, snug against
# overlayfs, back to back, in one throw-away containerd with snug
# (scripts/stack.sh) running SNUG_BINARY (default bin/snug). RUNS rounds of
# a run on each, in turns; prints each one's median and snug's ratio. Then
# RUNS runs on each alone, counting what the host disk did meanwhile
# (/proc/diskstats of the disk under the stack's directory): writes, KiB
# written and cache flushes per run, including what each run left to do
# after it (1.5 s of quiet is counted after the last run).
# PAUSE=SECONDS sleeps before each timed run; SNUG_EXTRA_POLICY adds to
# snug's policy (as for scripts/stack.sh).
# Needs root, make deps (containerd, ctr) and make build (bin/snug).
# Usage: bench/single-run.sh [RUNS] [SNUG_BINARY]   (RUNS = 20)
set -euo pipefail
runs=${1:-20}
. "$(dirname "$0")/lib.sh"
bench_needs single-run ctr containerd
snug=${2:-$here/bin/snug}
bench_stack snug-single "$snug"
ctr() { command ctr -a "$dir/containerd.sock" "$@" 2>/dev/null; }
for sn in overlayfs snug; do
  ctr images import --snapshotter "$sn" --base-name "localhost/$sn-test" "$dir/image.tar" >/dev/null
done
sleep 3 # the pool's first fill
run() { ctr run --rm --snapshotter "$1" "localhost/$1-test:latest" "$2" /bin/true >/dev/null; }
declare -A took
for i in $(seq "$runs"); do
  for sn in overlayfs snug; do
    sleep "${PAUSE:-0}"
    start=$(date +%s%N)
    run "$sn" "t-$sn-$i"
    took[$sn]+="$(( ($(date +%s%N) - start) / 1000 )) "
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
o=$(median <<<"${took[overlayfs]}")
s=$(median <<<"${took[snug]}")
printf 'back to back, %d runs each: overlayfs %.1f ms, snug %.1f ms, snug / overlayfs %.3f\n' \
  "$runs" "$(bc -l <<<"$o / 1000")" "$(bc -l <<<"$s / 1000")" "$(bc -l <<<"$s / $o")"
disk=$(lsblk -no PKNAME "$(findmnt -no SOURCE -T "$dir")" 2>/dev/null || true)
[ -n "$disk" ] || disk=$(basename "$(findmnt -no SOURCE -T "$dir")")
stat() { awk -v d="$disk" '$3 == d { print $8, $10, $19 }' /proc/diskstats; }
for sn in overlayfs snug; do
  sync
  read -r w0 s0 f0 < <(stat)
  for i in $(seq "$runs"); do run "$sn" "d-$sn-$i"; done
  sleep 1.5
  read -r w1 s1 f1 < <(stat)
  printf '%-9s per run on %s: %5.1f writes %7.1f KiB %5.1f flushes\n' "$sn" "$disk" \
    "$(bc -l <<<"($w1 - $w0) / $runs")" "$(bc -l <<<"($s1 - $s0) / 2 / $runs")" "$(bc -l <<<"($f1 - $f0) / $runs")"
done
