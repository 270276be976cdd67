#!/usr/bin/env bash
# import-writeback.sh: would writing an unpack's data back while containerd
# unpacks (instead of all of it at Commit's sync) make imports faster? In
# one throw-away stack (scripts/stack.sh), the big-layer test image
# (SNUG_BIGLAYER=1) is imported into snug ROUNDS times per mode, the modes
# in turns, each import from an empty containerd (`ctr images rm --sync`
# first):
#   none    as snug does it: the page cache is written back at Commit;
#   syncfs  `sync -f` on every mounted rw image of the stack every 100 ms
#           while the import runs (a write-behind);
#   bdi     the loop devices of the stack's images get `strict_limit` and
#           `max_bytes` = 32 MiB on their backing device info, so that the
#           kernel writes back (and throttles the unpack) beyond 32 MiB dirty.
# Prints each import's time, the median per mode, and the median time of
# the big layer's Commit (from snug serve's call log).
# Needs root, make deps (containerd, ctr) and make build (bin/snug).
# Usage: bench/import-writeback.sh [ROUNDS]   (5)
set -euo pipefail
rounds=${1:-5}
. "$(dirname "$0")/lib.sh"
bench_needs import-writeback ctr containerd
dir=$(bench_workdir snug-writeback)
helper=
cleanup() {
  [ -n "$helper" ] && kill "$helper" 2>/dev/null || true
  "$here/scripts/stack.sh" down "$dir/stack" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
bench_debug_snug "$dir"
# This measures unpacking through the rw images, which snug's differ (since
# 2026-12-05) no longer does: the stack runs without it.
SNUG_NO_DIFFER=1 "$here/scripts/stack.sh" up "$dir/stack" "$dir/snug-debug" >/dev/null
SNUG_BIGLAYER=1 "$here/scripts/testimage.sh" "$dir/big.tar" localhost/big:latest >/dev/null
ctr() { command ctr -a "$dir/stack/containerd.sock" "$@"; }

# syncfs_loop / bdi_loop: the helpers that run during an import.
syncfs_loop() {
  while :; do
    for m in "$dir"/stack/snug/snapshots/*/mnt; do
      mountpoint -q "$m" && sync -f "$m" 2>/dev/null || true
    done
    sleep 0.1
  done
}
bdi_loop() {
  while :; do
    for l in /sys/block/loop*; do
      b=$(cat "$l/loop/backing_file" 2>/dev/null) || continue
      case $b in "$dir"/*)
        dev=$(cat "$l/dev")
        echo $((32 << 20)) >"/sys/class/bdi/$dev/max_bytes" 2>/dev/null || true
        echo 1 >"/sys/class/bdi/$dev/strict_limit" 2>/dev/null || true
        ;;
      esac
    done
    sleep 0.02
  done
}

modes=(none syncfs bdi)
ctr images import --snapshotter snug --base-name localhost/big "$dir/big.tar" >/dev/null 2>&1 # warm-up
for r in $(seq 1 "$rounds"); do
  for k in 0 1 2; do
    mode=${modes[$(((r + k) % 3))]}
    ctr images rm --sync localhost/big:latest >/dev/null 2>&1
    sleep 2
    case $mode in
      syncfs) syncfs_loop & helper=$! ;;
      bdi) bdi_loop & helper=$! ;;
    esac
    before=$(wc -l <"$dir/stack/snug.log")
    a=$(date +%s%N)
    ctr images import --snapshotter snug --base-name localhost/big "$dir/big.tar" >/dev/null 2>&1
    b=$(date +%s%N)
    [ -n "$helper" ] && { kill "$helper"; wait "$helper" 2>/dev/null || true; helper=; }
    # The big layer's Commit is the longest of this import's.
    commit=$(tail -n +"$((before + 1))" "$dir/stack/snug.log" | sed -n 's|.*Snapshots/Commit took=||p' | awk '
      /ms$/ { sub(/ms$/, ""); print; next }
      /µs$/ { sub(/µs$/, ""); print $1 / 1000; next }
      /s$/ { sub(/s$/, ""); print $1 * 1000 }' | sort -g | tail -n 1)
    echo "$mode $(((b - a) / 1000000)) $commit" >>"$dir/results"
    printf '  round %d %-6s import %5d ms  big layer Commit %6.0f ms\n' "$r" "$mode" $(((b - a) / 1000000)) "$commit"
  done
done
med() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
for mode in "${modes[@]}"; do
  printf '%-6s median import %5d ms, median big layer Commit %6.0f ms\n' "$mode" \
    "$(awk -v m="$mode" '$1 == m { print $2 }' "$dir/results" | med)" \
    "$(awk -v m="$mode" '$1 == m { print $3 }' "$dir/results" | med)"
done
echo "reproduce: bench/import-writeback.sh $rounds"
