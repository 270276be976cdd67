#!/usr/bin/env bash
# trim-burst.sh: how soon a running container's burst of deletions goes
# back to the host. In one throw-away containerd with snug
# (scripts/stack.sh) running SNUG_BINARY (default bin/snug), a container
# writes a 24 MiB file and a directory of 12 MiB in 768 files and syncs;
# once its image file has settled, it deletes the file, waits 0.2 s, deletes
# the directory and syncs, while the host reads the image file's allocated
# size every 10 ms. Printed per round: how long after the host started the
# deletions (a `ctr tasks exec`, its own start included) the image file came
# back within 2 MiB of its size before the writes (ms). With the default
# trim_after (16 MiB) the directory alone is under the threshold: it goes
# back by the chase that follows the file's trim, or by the follow-up a
# second after that trim.
# Needs root, make deps (containerd, ctr) and make build (bin/snug).
# Usage: bench/trim-burst.sh [ROUNDS] [SNUG_BINARY]   (ROUNDS = 10)
set -euo pipefail
rounds=${1:-10}
. "$(dirname "$0")/lib.sh"
bench_needs trim-burst ctr containerd
snug=${2:-$here/bin/snug}
bench_stack snug-trimburst "$snug"
trap 'command ctr -a "$dir/containerd.sock" tasks kill -s KILL tb >/dev/null 2>&1 || true; bench_stack_down' EXIT
ctr() { command ctr -a "$dir/containerd.sock" "$@"; }
ctr images import --snapshotter snug --base-name localhost/snug-test "$dir/image.tar" >/dev/null
ctr run -d --snapshotter snug localhost/snug-test:latest tb /bin/sleep 100000 >/dev/null
imgs=$(find "$dir" -path '*/snapshots/*/rw.img')
[ "$(wc -w <<<"$imgs")" = 1 ] || { echo "trim-burst: want the container's one rw image, found: $imgs" >&2; exit 1; }
img=$imgs
alloc() { echo $(( $(stat -c %b "$img") * 512 )); }
settle() { # until the image file's size holds still for a second
  local a b
  a=$(alloc)
  while sleep 1; b=$(alloc); [ "$a" != "$b" ]; do a=$b; done
}
printf '%-6s %10s %s\n' round "back (ms)" "image file (MiB): before the writes, with them"
for r in $(seq "$rounds"); do
  settle
  base=$(alloc)
  ctr tasks exec --exec-id w$r tb /bin/sh -c '
    dd if=/dev/urandom of=/big bs=1M count=24 2>/dev/null
    mkdir /dir; i=0
    while [ $i -lt 768 ]; do head -c 16384 /big > /dir/f$i; i=$((i + 1)); done
    sync'
  settle
  full=$(alloc)
  start=$(date +%s%N)
  ctr tasks exec --exec-id d$r tb /bin/sh -c 'rm /big; sleep 0.2; rm -rf /dir; sync' &
  exec_pid=$!
  back=">10000"
  while now=$(date +%s%N); [ "$now" -lt $((start + 10000000000)) ]; do
    if [ $(($(alloc) - base)) -le $((2 << 20)) ]; then
      back=$(((now - start) / 1000000))
      break
    fi
    sleep 0.01
  done
  wait "$exec_pid"
  printf '%-6s %10s %d, %d\n' "$r" "$back" $((base >> 20)) $((full >> 20))
done
