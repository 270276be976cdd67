#!/usr/bin/env bash
# fsync-trace.sh: where a container's fsync goes. For N fsync'd 4 KiB random
# overwrites (fio, the bench-io pattern) in a directory of the host disk (what
# overlayfs's upper directory is) and in snug images made and mounted by snug
# itself (`snug image create`, `snug image mount`) under each write-path
# policy, it counts with perf the kernel events per fsync: block requests
# issued to the image's loop device and to the host disk (by kind: W data,
# WM metadata/journal, FF cache flush), jbd2 commits and ext4 fast commits of
# the image, and the host fsyncs the loop driver makes (ext4_sync_file on the
# host disk). Needs root, fio and perf (Debian: linux-perf), and bin/snug
# (make build).
# Each kind runs ROUNDS times in turn and the table has the median of each
# column (this machine's disk latency moves from minute to minute).
# Usage: bench/fsync-trace.sh [N] [ROUNDS] [HOSTDIR]   (N = 1000; ROUNDS = 3; HOSTDIR = /var/lib/snug-trace)
set -euo pipefail
n=${1:-1000}
rounds=${2:-3}
hostdir=${3:-/var/lib/snug-trace}
here=$(cd "$(dirname "$0")/.." && pwd)
snug=$here/bin/snug
for tool in fio perf "$snug"; do
  command -v "$tool" >/dev/null || { echo "fsync-trace: needs $tool" >&2; exit 1; }
done
mkdir -p "$hostdir"
work=$(mktemp -d "$hostdir/trace.XXXXXX")
cleanup() {
  for m in "$work"/mnt-*; do [ -d "$m" ] && umount "$m" 2>/dev/null || true; done
  for l in $(losetup -j "$work/raw.img" -O NAME -n 2>/dev/null); do losetup -d "$l" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
hostdev=$(findmnt -no MAJ:MIN -T "$work" | tr -d ' ')

# trace DIR LOOPDEV FILE LABEL: N fsync'd writes in DIR, events per fsync;
# host fsyncs are counted for FILE (the image, or fio's file) only. Run it on
# a quiet machine: the host disk's requests are everyone's.
trace() {
  local dir=$1 loop=$2 file=$3
  fio --name=lay --filename="$dir/f" --rw=randwrite --bs=4k --size=64m --fsync=1 --number_ios=200 --ioengine=psync >/dev/null
  perf record -q -o "$work/perf.data" -a -e block:block_rq_issue -e block:block_rq_complete -e jbd2:jbd2_start_commit \
    -e ext4:ext4_fc_commit_start -e ext4:ext4_sync_file_enter -- \
    fio --name=t --filename="$dir/f" --rw=randwrite --bs=4k --size=64m --fsync=1 --number_ios="$n" \
      --ioengine=psync --output-format=terse --terse-version=3 >"$work/fio.txt" 2>/dev/null
  local iops ino
  iops=$(awk -F';' '{ print $49 }' "$work/fio.txt")
  ino=$(stat -c %i "$file")
  perf script -i "$work/perf.data" 2>/dev/null | awk -v n="$n" -v host="$hostdev" -v loop="$loop" -v iops="$iops" -v ino="$ino" '
    BEGIN { sub(":", ",", host); sub(":", ",", loop) }
    # Time: while a host disk request is outstanding the fsync waits for the
    # disk ("disk"); while only a loop request is, for the loop driver (its
    # worker, and the code of the host filesystem on the way to the disk: "loop").
    /block:block_rq_(issue|complete):/ {
      for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+:$/) t = substr($i, 1, length($i) - 1)
      if (last != "") { if (out[host] > 0) disk += t - last; else if (out[loop] > 0) inloop += t - last }
      last = t
    }
    /block:block_rq_complete:/ {
      for (i = 1; i <= NF; i++) if ($i == "block:block_rq_complete:") d = $(i+1)
      if (out[d] > 0) out[d]--
    }
    /block:block_rq_issue:/ {
      for (i = 1; i <= NF; i++) if ($i == "block:block_rq_issue:") { d = $(i+1); k = $(i+2) }
      kind = (k ~ /F/ && k !~ /W/) ? "FF" : (k ~ /M/ ? "WM" : (k ~ /W/ ? "W" : "R"))
      if (d == host) h[kind]++; else if (d == loop) l[kind]++
      if (kind != "R") out[d]++
    }
    index($0, "jbd2:jbd2_start_commit: dev " loop " ") { jbd++ }
    index($0, "ext4:ext4_fc_commit_start: dev " loop " ") { fc++ }
    index($0, "ext4:ext4_sync_file_enter: dev " host " ino " ino " ") { hf++ }
    END {
      us = 1e6 / iops; dus = disk * 1e6 / n; lus = inloop * 1e6 / n
      printf "%8.0f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.0f %7.0f %7.0f %7.0f\n", iops,
        l["W"]/n, l["WM"]/n, l["FF"]/n, jbd/n, fc/n, hf/n, h["W"]/n, h["WM"]/n, h["FF"]/n, us, dus, lus, us - dus - lus
    }' | sed "s/^/$4\t/" >>"$work/rows"
}

# round: one trace of each kind, in turn.
round() {
mkdir -p "$work/host"
rm -f "$work/host/f"; touch "$work/host/f"
trace "$work/host" none "$work/host/f" "host dir (overlayfs)"
for mode in "default|" "fast_commit|fast_commit = true" "buffered loop|direct_io = false"; do
  name=${mode%%|*}; key=${mode#*|}
  printf 'root = "%s/root"\n[image]\n%s\n' "$work" "$key" >"$work/policy.toml"
  img=$work/img-${name// /-}; mnt=$work/mnt-${name// /-}
  mkdir -p "$mnt"
  "$snug" --config "$work/policy.toml" image create "$img" >/dev/null
  "$snug" --config "$work/policy.toml" image mount "$img" "$mnt" >/dev/null
  dev=$(findmnt -no MAJ:MIN "$mnt" | tr -d ' ')
  trace "$mnt" "$dev" "$img" "snug $name"
  "$snug" --config "$work/policy.toml" image unmount "$img" >/dev/null
  rm -f "$img"
done
# Two layouts snug does not offer, for comparison: the same image without a
# journal, and with data=writeback,journal_async_commit (what a crash loses
# there is why neither is offered; see docs/design.md).
for mode in "no journal (not offered)|-O ^has_journal|" "async commit (not offered)|-J size=4|data=writeback,journal_async_commit"; do
  IFS='|' read -r name mkfs opts <<<"$mode"
  img=$work/raw.img; mnt=$work/mnt-raw
  rm -f "$img"; truncate -s 10G "$img"; mkdir -p "$mnt"
  # shellcheck disable=SC2086
  mkfs.ext4 -F -q -b 4096 -m 0 -O ^resize_inode $mkfs -E lazy_itable_init=1,lazy_journal_init=1,nodiscard "$img"
  loop=$(losetup --show -f --direct-io=on -b 4096 "$img")
  mount -o "noinit_itable${opts:+,$opts}" "$loop" "$mnt"
  trace "$mnt" "$(lsblk -no MAJ:MIN "$loop" | tr -d ' ')" "$img" "$name"
  umount "$mnt"; losetup -d "$loop"
done
}

for _ in $(seq "$rounds"); do round; done
printf '%-28s %8s %7s %7s %7s %7s %7s %7s %7s %7s %7s %7s %7s %7s %7s\n' "" "IOPS" "loop W" "loop WM" "loop FF" "jbd2" "fc" "host fs" "host W" "host WM" "host FF" "us" "disk us" "loop us" "rest us"
# The median of the rounds, column by column, each kind in its first order.
awk -F'\t' '
  !($1 in count) { order[++kinds] = $1 }
  { c = ++count[$1]; ncol = split($2, f, " "); for (j = 1; j <= ncol; j++) v[$1, j, c] = f[j] }
  END {
    for (k = 1; k <= kinds; k++) {
      name = order[k]; c = count[name]; line = sprintf("%-28s", name)
      for (j = 1; j <= ncol; j++) {
        for (i = 1; i <= c; i++) a[i] = v[name, j, i]
        for (i = 2; i <= c; i++) { x = a[i]; for (m = i - 1; m >= 1 && a[m] > x; m--) a[m+1] = a[m]; a[m+1] = x }
        med = (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
        line = line sprintf(j == 1 || j >= 11 ? " %7.0f" : " %7.2f", med)
      }
      print line
    }
  }' "$work/rows"
echo "per fsync: loop W/WM/FF = data writes, metadata+journal writes, cache flushes sent to the image's loop device;"
echo "jbd2, fc = the image's jbd2 commits and fast commits; host fs = fsyncs of the image file (each loop flush is one);"
echo "host W/WM/FF = requests on the host disk ($hostdev); us = microseconds per fsync (1/IOPS), of which: disk us = a host disk request"
echo "outstanding, loop us = only a loop request outstanding (the loop driver and the host filesystem's code), rest us = neither"
echo "(the application, the system calls, the image's ext4); medians of $rounds rounds. reproduce: bench/fsync-trace.sh $n $rounds"
