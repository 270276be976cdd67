#!/usr/bin/env bash
# run-phases.sh: where a single `ctr run --rm ... /bin/true` spends the time
# snug adds to it. The run is split into its three ctr steps, each timed on
# its own: `ctr containers create` (containerd's Prepare of the root),
# `ctr tasks start` (the root's Mounts, the shim, runc create and start, the
# wait for the exit, and the task's delete, which unmounts the root) and
# `ctr containers rm` (the container and its snapshot's record deleted; the
# snapshotter's Remove follows in containerd's garbage collection). Snug
# against overlayfs, in turns, RUNS rounds, in one throw-away containerd with
# snug (scripts/stack.sh) running SNUG_BINARY (default bin/snug); prints each
# step's median per snapshotter and snug's ratio and difference. Each step
# is a ctr process of its own, so each median includes ctr's start (the same
# for both).
# Needs root, make deps (containerd, ctr) and make build (bin/snug).
# Usage: bench/run-phases.sh [RUNS] [SNUG_BINARY]   (RUNS = 30)
set -euo pipefail
runs=${1:-30}
. "$(dirname "$0")/lib.sh"
bench_needs run-phases ctr containerd
snug=${2:-$here/bin/snug}
bench_stack snug-phases "$snug"
ctr() { command ctr -a "$dir/containerd.sock" "$@" >/dev/null 2>&1; }
for sn in overlayfs snug; do
  ctr images import --snapshotter "$sn" --base-name "localhost/$sn-test" "$dir/image.tar"
done
sleep 3 # the pool's first fill
now() { date +%s%N; }
declare -A took
for i in $(seq "$runs"); do
  for sn in overlayfs snug; do
    id=p-$sn-$i
    t0=$(now)
    ctr containers create --snapshotter "$sn" "localhost/$sn-test:latest" "$id" /bin/true
    t1=$(now)
    ctr tasks start --null-io "$id"
    t2=$(now)
    ctr containers rm "$id"
    t3=$(now)
    took[$sn-create]+="$(((t1 - t0) / 1000)) "
    took[$sn-start]+="$(((t2 - t1) / 1000)) "
    took[$sn-rm]+="$(((t3 - t2) / 1000)) "
    took[$sn-all]+="$(((t3 - t0) / 1000)) "
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf '%d rounds, medians (ms)   overlayfs       snug   ratio   snug - overlayfs\n' "$runs"
for step in create start rm all; do
  o=$(median <<<"${took[overlayfs-$step]}")
  s=$(median <<<"${took[snug-$step]}")
  printf '%-24s %10.1f %10.1f  %5.3f  %+8.1f\n' "$step" "$(bc -l <<<"$o / 1000")" "$(bc -l <<<"$s / 1000")" \
    "$(bc -l <<<"$s / $o")" "$(bc -l <<<"($s - $o) / 1000")"
done
