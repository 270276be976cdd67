#!/usr/bin/env bash
# loop-floor.sh: what the loop device alone costs an fsync'd write, before
# any filesystem inside it. fio's 4 KiB random writes with an fsync (or
# fdatasync) after each, into blocks already written (a database
# overwriting its file, so no write allocates anything, on the host or in
# the image), in turn:
#   - a file on the host disk (what overlayfs's upper directory gives);
#   - a loop device over that same file, written as a raw block device
#     (no filesystem in it, O_DIRECT: one write request and one flush per
#     write, as little as a filesystem could send), the loop device with
#     direct I/O (snug's default) and buffered;
#   - a file in an ext4 image made with snug's mkfs options, on a loop
#     device with direct I/O, mounted with snug's options, and once more
#     with `lazytime` (a candidate of issue 16).
# Each row gives IOPS (median of ROUNDS, the rows taking turns) and the
# cache flushes completed per write, at the loop device or, for the host
# file, at the host disk. Needs root and fio.
# Usage: bench/loop-floor.sh [ROUNDS] [HOSTDIR]   (3; /var/lib/snug-loop-floor)
set -euo pipefail
rounds=${1:-3}
hostdir=${2:-/var/lib/snug-loop-floor}
. "$(dirname "$0")/fio-lib.sh"
fio_workdir loop-floor "$hostdir"
size=64m
runtime=6

# hostdisk: the block device holding $work, by name as /proc/diskstats has it.
hostdisk=$(sed -n 's/^DEVNAME=//p' "/sys/dev/block/$(mountpoint -d "$(stat -c %m "$work")")/uevent")

# fio_write FILE SYNC [DIRECT]: IOPS of 4 KiB random overwrites of FILE, SYNC
# after each, through the page cache or, with DIRECT 1, with O_DIRECT.
fio_write() {
  fio --name=w --filename="$1" --rw=randwrite --bs=4k --size=$size --"$2"=1 --overwrite=1 --direct="${3:-0}" \
    --runtime=$runtime --time_based --ioengine=psync --output-format=terse --terse-version=3 2>/dev/null |
    awk -F';' '{ print $49 }'
}
# layout FILE: FILE written in full and fsync'd, so later writes allocate nothing.
layout() {
  fio --name=l --filename="$1" --rw=write --bs=1m --size=$size --end_fsync=1 --ioengine=psync >/dev/null 2>&1
}

layout "$work/raw.img"
snug_mkfs "$work/image.img" 2G size=4 131072

declare -A iops fl
# row NAME SYNC: measures row NAME into iops[NAME] and fl[NAME].
row() {
  local name=$1 sync=$2 dev target loop="" opts=""
  case $name in
    "host file"*) dev=$hostdisk target=$work/raw.img ;;
    "raw loop, direct I/O") loop=$(losetup --show -f --direct-io=on -b 4096 "$work/raw.img") ;;
    "raw loop, buffered") loop=$(losetup --show -f --direct-io=off -b 4096 "$work/raw.img") ;;
    "ext4 image"*)
      opts=noinit_itable,errors=remount-ro
      [[ $name == *lazytime* ]] && opts+=,lazytime
      loop=$(losetup --show -f --direct-io=on -b 4096 "$work/image.img")
      mount -o "$opts" "$loop" "$work/mnt"
      target=$work/mnt/db
      [ -e "$target" ] || layout "$target"
      ;;
  esac
  if [ -n "$loop" ]; then
    dev=$(basename "$loop")
    [ -n "$opts" ] || target=$loop
  fi
  local before after got direct=0
  [[ $name == "raw loop"* ]] && direct=1
  sync
  before=$(flushes "$dev")
  got=$(fio_write "$target" "$sync" "$direct")
  after=$(flushes "$dev")
  if [ -n "$opts" ]; then umount "$work/mnt"; fi
  if [ -n "$loop" ]; then losetup -d "$loop"; fi
  iops[$name]+="$got "
  fl[$name]+="$(awk -v f=$((after - before)) -v n="$got" -v t=$runtime 'BEGIN { printf "%.2f", f / (n * t) }') "
}

rows=("host file, fsync|fsync" "raw loop, direct I/O|fsync" "raw loop, buffered|fsync"
  "ext4 image, fsync|fsync" "ext4 image, lazytime, fsync|fsync"
  "host file, fdatasync|fdatasync" "ext4 image, fdatasync|fdatasync")
for ((r = 0; r < rounds; r++)); do
  # The rows take turns, the first one moving each round.
  for ((i = 0; i < ${#rows[@]}; i++)); do
    IFS='|' read -r name sync <<<"${rows[(i + r) % ${#rows[@]}]}"
    row "$name" "$sync"
  done
done

printf 'loop-floor: fio 4 KiB random overwrites of a %s file, a sync after each; medians of %d rounds; kernel %s\n\n' "$size" "$rounds" "$(uname -r)"
printf '%-32s %10s %14s %14s\n' "target" "IOPS" "/ host file" "flushes/write"
hostfsync=$(median <<<"${iops["host file, fsync"]}")
hostdsync=$(median <<<"${iops["host file, fdatasync"]}")
for r in "${rows[@]}"; do
  name=${r%%|*}
  ref=$hostfsync
  [[ $r == *fdatasync ]] && ref=$hostdsync
  awk -v n="$name" -v v="$(median <<<"${iops[$name]}")" -v f="$(median <<<"${fl[$name]}")" -v h="$ref" \
    'BEGIN { printf "%-32s %10.0f %13.2fx %14s\n", n, v, v / h, f }'
done
echo "reproduce: bench/loop-floor.sh $rounds"
