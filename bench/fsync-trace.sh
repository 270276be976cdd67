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
# Usage: bench/fsync-trace.sh [N] [HOSTDIR]   (N = 1000; HOSTDIR = /var/lib/snug-trace)
set -euo pipefail
n=${1:-1000}
hostdir=${2:-/var/lib/snug-trace}
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
  perf record -q -o "$work/perf.data" -a -e block:block_rq_issue -e jbd2:jbd2_start_commit \
    -e ext4:ext4_fc_commit_start -e ext4:ext4_sync_file_enter -- \
    fio --name=t --filename="$dir/f" --rw=randwrite --bs=4k --size=64m --fsync=1 --number_ios="$n" \
      --ioengine=psync --output-format=terse --terse-version=3 >"$work/fio.txt" 2>/dev/null
  local iops ino
  iops=$(awk -F';' '{ print $49 }' "$work/fio.txt")
  ino=$(stat -c %i "$file")
  perf script -i "$work/perf.data" 2>/dev/null | awk -v n="$n" -v host="$hostdev" -v loop="$loop" -v iops="$iops" -v ino="$ino" '
    BEGIN { sub(":", ",", host); sub(":", ",", loop) }
    /block:block_rq_issue:/ {
      for (i = 1; i <= NF; i++) if ($i == "block:block_rq_issue:") { d = $(i+1); k = $(i+2) }
      kind = (k ~ /F/ && k !~ /W/) ? "FF" : (k ~ /M/ ? "WM" : (k ~ /W/ ? "W" : "R"))
      if (d == host) h[kind]++; else if (d == loop) l[kind]++
    }
    index($0, "jbd2:jbd2_start_commit: dev " loop " ") { jbd++ }
    index($0, "ext4:ext4_fc_commit_start: dev " loop " ") { fc++ }
    index($0, "ext4:ext4_sync_file_enter: dev " host " ino " ino " ") { hf++ }
    END {
      printf "%8.0f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f\n", iops,
        l["W"]/n, l["WM"]/n, l["FF"]/n, jbd/n, fc/n, hf/n, h["W"]/n, h["WM"]/n, h["FF"]/n
    }' | sed "s/^/$(printf '%-28s' "$4")/"
}

printf '%-28s %8s %7s %7s %7s %7s %7s %7s %7s %7s %7s\n' "" "IOPS" "loop W" "loop WM" "loop FF" "jbd2" "fc" "host fs" "host W" "host WM" "host FF"
mkdir -p "$work/host"
touch "$work/host/f"
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
echo "per fsync: loop W/WM/FF = data writes, metadata+journal writes, cache flushes sent to the image's loop device;"
echo "jbd2, fc = the image's jbd2 commits and fast commits; host fs = fsyncs of the image file (each loop flush is one);"
echo "host W/WM/FF = requests on the host disk ($hostdev). reproduce: bench/fsync-trace.sh $n"
