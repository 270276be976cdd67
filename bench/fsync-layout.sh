#!/usr/bin/env bash
# fsync-layout.sh: two layout candidates of issue 16 against snug's own, for
# fsync'd writes: where the journal lies in the image, and the loop device's
# logical block size. fio's rand_write_fsync pattern of make bench-io (a new
# 128 MiB file, 4 KiB random writes, fsync after each) in a 32 GiB thin
# image (snug's default ceiling, snug's mkfs and mount options, a loop
# device with direct I/O), which differs in one thing at a time:
#   - snug: mkfs.ext4 places the 4 MiB journal in the middle of the
#     filesystem, 16 GiB from the data, which snug packs at the start;
#   - journal at 8 MiB: `-J location=8M`, next to the data;
#   - 512-byte loop blocks: the loop device's logical block size 512 instead
#     of snug's 4096 (ext4's block size).
# Rounds take turns; medians of IOPS, and cache flushes per write at the
# loop device. Needs root and fio.
# Usage: bench/fsync-layout.sh [ROUNDS] [HOSTDIR]   (3; /var/lib/snug-layout)
set -euo pipefail
rounds=${1:-3}
hostdir=${2:-/var/lib/snug-layout}
. "$(dirname "$0")/fio-lib.sh"
fio_workdir fsync-layout "$hostdir"
snug_mkfs "$work/middle.img" 32G size=4 65536
snug_mkfs "$work/start.img" 32G size=4,location=8M 65536

measure() {
  fio --name=w --filename="$1/rw" --rw=randwrite --bs=4k --size=128m --fsync=1 --runtime=10 --time_based \
    --ioengine=psync --output-format=terse --terse-version=3 2>/dev/null | awk -F';' '{ print $49 }'
  rm -f "$1/rw"
}

variants=("snug (journal in the middle)|middle|4096" "journal at 8 MiB|start|4096" "512-byte loop blocks|middle|512")
declare -A iops fl
for ((r = 0; r < rounds; r++)); do
  for ((i = 0; i < ${#variants[@]}; i++)); do
    IFS='|' read -r name img bs <<<"${variants[(i + r) % ${#variants[@]}]}"
    rm -f "$work/cur.img"
    cp --sparse=always "$work/$img.img" "$work/cur.img"
    loop=$(losetup --show -f --direct-io=on -b "$bs" "$work/cur.img")
    mount -o noinit_itable,errors=remount-ro "$loop" "$work/mnt"
    before=$(flushes "$(basename "$loop")")
    got=$(measure "$work/mnt")
    after=$(flushes "$(basename "$loop")")
    umount "$work/mnt"
    losetup -d "$loop"
    iops[$name]+="$got "
    fl[$name]+="$(awk -v f=$((after - before)) -v n="$got" 'BEGIN { printf "%.2f", f / (n * 10) }') "
  done
done

printf 'fsync-layout: fio 4 KiB random writes, fsync after each, into a new 128 MiB file in a 32 GiB thin image, direct I/O; medians of %d rounds; kernel %s\n\n' "$rounds" "$(uname -r)"
printf '%-32s %10s %10s %14s\n' "image" "IOPS" "/ snug" "flushes/write"
base=$(median <<<"${iops["snug (journal in the middle)"]}")
for v in "${variants[@]}"; do
  name=${v%%|*}
  awk -v n="$name" -v v="$(median <<<"${iops[$name]}")" -v f="$(median <<<"${fl[$name]}")" -v b="$base" \
    'BEGIN { printf "%-32s %10.0f %9.2fx %14s\n", n, v, v / b, f }'
done
echo "reproduce: bench/fsync-layout.sh $rounds"
