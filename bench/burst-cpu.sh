#!/usr/bin/env bash
# burst-cpu.sh: what a burst of containers costs the host's CPUs, snug
# against overlayfs. In one throw-away containerd with snug (scripts/stack.sh),
# N `ctr run --rm ... /bin/true` start at once on each snapshotter in turn,
# ROUNDS times; for each burst it prints the latency percentiles, the CPU
# time the whole machine spent (user, system, iowait, from /proc/stat) and
# the CPU time of `snug serve` itself (from /proc/PID/stat). With
# PERF=ROUND it also profiles `snug serve` during snug's burst of that round
# (perf record -g, into $PERF_OUT, default /tmp/snug-burst.perf; read it with
# `perf report -i FILE --children --sort symbol -g none`). With CALLS=1
# `snug serve` logs each call's time (--log-level debug) and each snug
# burst is followed by the p50, p90 and max of its Prepare, Mounts,
# Remove and Cleanup calls meanwhile.
# Needs root, make deps (containerd, ctr) and make build (bin/snug).
# Usage: bench/burst-cpu.sh [N] [ROUNDS]   (N = 50, ROUNDS = 2)
set -euo pipefail
n=${1:-50}
rounds=${2:-2}
. "$(dirname "$0")/lib.sh"
bench_needs burst-cpu ctr containerd bc
dir=$(bench_workdir snug-burst)
trap '"$here/scripts/stack.sh" down "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
snug=$here/bin/snug
if [ -n "${CALLS:-}" ]; then
  bench_debug_snug "$dir"
  snug=$dir/snug-debug
fi
"$here/scripts/stack.sh" up "$dir" "$snug" >/dev/null
"$here/scripts/testimage.sh" "$dir/image.tar" localhost/snug-test:latest >/dev/null
ctr() { command ctr -a "$dir/containerd.sock" "$@"; }
for sn in snug overlayfs; do
  ctr images import --snapshotter "$sn" --base-name localhost/snug-test "$dir/image.tar" >/dev/null 2>&1
done
daemon=$(cat "$dir/snug.pid")
machine() { awk '/^cpu /{ print $2 + $3, $4, $6 }' /proc/stat; } # user, system, iowait (ticks)
serve() { awk '{ print $14 + $15 }' "/proc/$daemon/stat"; }        # utime + stime (ticks)
hz=$(getconf CLK_TCK)
printf '%-10s %5s %8s %8s %9s %9s %9s %11s\n' "" round "p50 (s)" "p90 (s)" "user (s)" "sys (s)" "iowait" "snug serve"
for r in $(seq 1 "$rounds"); do
  for sn in snug overlayfs; do
    read -r u0 s0 w0 <<<"$(machine)"
    d0=$(serve)
    logged=$(wc -l <"$dir/snug.log")
    perf_pid=
    if [ "$sn" = snug ] && [ "${PERF:-}" = "$r" ]; then
      perf record -q -F 499 -g -p "$daemon" -o "${PERF_OUT:-/tmp/snug-burst.perf}" >/dev/null 2>&1 &
      perf_pid=$!
    fi
    runs=()
    for i in $(seq 1 "$n"); do
      (
        start=$(date +%s.%N)
        ctr run --rm --snapshotter "$sn" localhost/snug-test:latest "burst-$sn-$r-$i" /bin/true >/dev/null 2>&1 || echo "burst-$sn-$r-$i failed" >&2
        echo "$(date +%s.%N) - $start" | bc
      ) >>"$dir/latency-$sn-$r" &
      runs+=($!)
    done
    wait "${runs[@]}"
    [ -n "$perf_pid" ] && { kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; }
    read -r u1 s1 w1 <<<"$(machine)"
    d1=$(serve)
    sort -n "$dir/latency-$sn-$r" | awk -v sn="$sn" -v r="$r" -v hz="$hz" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v w=$((w1 - w0)) -v d=$((d1 - d0)) '
      { a[NR] = $1 }
      END { printf "%-10s %5d %8.2f %8.2f %9.1f %9.1f %9.1f %11.2f\n", sn, r, a[int(NR / 2) + 1], a[int(NR * 0.9)], u / hz, s / hz, w / hz, d / hz }'
    if [ -n "${CALLS:-}" ] && [ "$sn" = snug ]; then
      for m in Prepare Mounts Remove Cleanup; do
        printf '    %s\n' "$(bench_call_times "$dir/snug.log" "$logged" "$m")"
      done
    fi
  done
done
echo "$n containers at once per burst (ctr run --rm ... /bin/true); CPU: the whole machine's, and snug serve's own, during each burst."
echo "reproduce: bench/burst-cpu.sh $n $rounds"
