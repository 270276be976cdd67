#!/usr/bin/env bash
# premount-ab.sh: what premounted pool images (pool.premount) change, side
# by side. Two throw-away stacks (scripts/stack.sh) run the same snug
# binary, one with `[pool] premount = false`, one with the default
# (premount on); each `snug serve` logs every call's time (--log-level
# debug). RUNS rounds of `ctr run --rm ... /bin/true`, each round on snug
# without premount, snug with it and overlayfs (in the first stack's
# containerd), the first one changing every round; then BURSTS rounds of N
# containers at once on each snug stack in turn (after a warm-up burst on
# each, so that the pool has grown to the burst's size). Prints medians of
# the runs, each burst's p50/p90, and each daemon's Prepare and Remove
# times (p50/p90 of the calls of the runs, from the call log).
# Needs root, make deps (containerd, ctr) and make build (bin/snug).
# Usage: bench/premount-ab.sh [RUNS] [BURSTS] [N]   (40, 2, 50)
set -euo pipefail
runs=${1:-40}
bursts=${2:-2}
n=${3:-50}
. "$(dirname "$0")/lib.sh"
bench_needs premount-ab ctr containerd
dir=$(bench_workdir snug-premount)
cleanup() {
  for s in off on; do "$here/scripts/stack.sh" down "$dir/$s" >/dev/null 2>&1 || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
bench_debug_snug "$dir"
SNUG_EXTRA_POLICY=$'[pool]\npremount = false' "$here/scripts/stack.sh" up "$dir/off" "$dir/snug-debug" >/dev/null
"$here/scripts/stack.sh" up "$dir/on" "$dir/snug-debug" >/dev/null
"$here/scripts/testimage.sh" "$dir/image.tar" localhost/snug-test:latest >/dev/null
ctr() { command ctr -a "$dir/$1/containerd.sock" "${@:2}"; }
ctr off images import --snapshotter snug --base-name localhost/snug-test "$dir/image.tar" >/dev/null 2>&1
ctr off images import --snapshotter overlayfs --base-name localhost/snug-test "$dir/image.tar" >/dev/null 2>&1
ctr on images import --snapshotter snug --base-name localhost/snug-test "$dir/image.tar" >/dev/null 2>&1
sleep 3 # the pools fill
declare -A logged # the call log lines before the runs: the import's calls are not counted
for s in off on; do logged[$s]=$(wc -l <"$dir/$s/snug.log"); done

# run VARIANT ID: one ctr run --rm; prints its milliseconds.
run() {
  local stack=${1%%:*} sn=${1##*:} a b
  a=$(date +%s%N)
  ctr "$stack" run --rm --snapshotter "$sn" localhost/snug-test:latest "$2" /bin/true >/dev/null 2>&1 || echo "run $1 $2 failed" >&2
  b=$(date +%s%N)
  echo $(((b - a) / 1000000))
}
variants=(off:snug on:snug off:overlayfs)
names=("snug, premount off" "snug, premount on" overlayfs)
for i in $(seq 1 "$runs"); do
  for k in 0 1 2; do
    v=$(((i + k) % 3))
    run "${variants[$v]}" "r$i-$v" >>"$dir/runs-$v"
  done
done
median() { sort -n "$1" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
over=$(median "$dir/runs-2")
echo "ctr run --rm ... /bin/true, $runs runs each, round robin"
for v in 0 1 2; do
  m=$(median "$dir/runs-$v")
  printf '  %-20s median %5d ms  %5.2fx overlayfs\n' "${names[$v]}" "$m" "$(echo "$m $over" | awk '{ print $1 / $2 }')"
done

# calls METHOD STACK: p50, p90 and max of the daemon's METHOD calls during the runs.
calls() { bench_call_times "$dir/$2/snug.log" "${logged[$2]}" "$1"; }
for s in off on; do
  echo "  premount $s: $(calls Prepare "$s"); $(calls Remove "$s")"
done

# burst STACK ROUND: n containers at once; prints p50 and p90 (ms).
burst() {
  local out="$dir/burst-$1-$2"
  for i in $(seq 1 "$n"); do
    run "$1:snug" "b$2-$i" >>"$out" &
  done
  wait
  sort -n "$out" | awk '{ a[NR] = $1 } END { printf "p50 %6d ms  p90 %6d ms", a[int(NR / 2) + 1], a[int(NR * 0.9)] }'
}
if [ "$bursts" -gt 0 ]; then
  burst off 0 >/dev/null
  burst on 0 >/dev/null
  sleep 10
  echo "$n containers at once, $bursts rounds (after a warm-up burst each)"
  for r in $(seq 1 "$bursts"); do
    order="off on"
    [ $((r % 2)) = 0 ] && order="on off"
    for s in $order; do
      echo "  round $r premount $s: $(burst "$s" "$r")"
      sleep 10 # the pool refills after a lull
    done
  done
fi
echo "reproduce: bench/premount-ab.sh $runs $bursts $n"
