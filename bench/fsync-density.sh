#!/usr/bin/env bash
# fsync-density.sh: what the host file under an image costs a container's
# fsync'd writes. fio's rand_write_fsync pattern of make bench-io (a new
# 128 MiB file, 4 KiB random writes, fsync after each) runs in ext4 images
# on loop devices that differ in one thing at a time:
#   - sparse: the image file has holes where nothing was written yet, as a
#     thin image does (snug), so the container's first write to a block
#     makes the host allocate it;
#   - dense: every block of the image file written once (blockfile copies
#     its scratch image in full for each container);
#   - unwritten: the holes preallocated on the host with fallocate
#     (unwritten extents, not written);
# each through a loop device with direct I/O (snug's default) and without
# (containerd's loop mounts, blockfile and erofs), and once through an
# overlay whose upper directory is on the image (a snug container's root;
# blockfile's is the image itself). The images are made with
# snug's mkfs options (4 MiB journal, no resize_inode, lazy inode tables)
# and mounted with its options, at 2 GiB so a dense copy stays small; a
# last pair is blockfile's own layout (mkfs.ext4 defaults). Rounds take
# turns; medians. Needs root and fio.
# Usage: bench/fsync-density.sh [ROUNDS] [HOSTDIR]   (3; /var/lib/snug-density)
set -euo pipefail
rounds=${1:-3}
hostdir=${2:-/var/lib/snug-density}
. "$(dirname "$0")/fio-lib.sh"
fio_workdir density "$hostdir"
mkdir -p "$work/host"

snug_mkfs "$work/snug.img" 2G size=4 131072
truncate -s 2G "$work/blockfile.img"
mkfs.ext4 -F -q "$work/blockfile.img"

# prepare LAYOUT SRC: the image to measure, as $work/cur.img
prepare() {
  rm -f "$work/cur.img"
  case $1 in
    sparse) cp --sparse=always "$2" "$work/cur.img" ;;
    dense) cp --sparse=never "$2" "$work/cur.img" ;;
    unwritten) cp --sparse=always "$2" "$work/cur.img"; fallocate -o 0 -l "$(stat -c %s "$2")" "$work/cur.img" ;;
  esac
}

# measure DIR: fio's IOPS
measure() {
  fio --name=w --filename="$1/rw" --rw=randwrite --bs=4k --size=128m --fsync=1 --runtime=8 --time_based \
    --ioengine=psync --output-format=terse --terse-version=3 2>/dev/null | awk -F';' '{ print $49 }'
  rm -f "$1/rw"
}

variants=("snug sparse|snug|sparse" "snug sparse, overlay on it|snug|sparse|overlay" "snug unwritten|snug|unwritten" "snug dense|snug|dense"
  "blockfile layout sparse|blockfile|sparse" "blockfile layout dense|blockfile|dense")
declare -A got
for ((r = 0; r < rounds; r++)); do
  got[host]+="$(measure "$work/host") "
  for v in "${variants[@]}"; do
    IFS='|' read -r name src layout overlay <<<"$v"
    for dio in on off; do
      prepare "$layout" "$work/$src.img"
      opts=noinit_itable,errors=remount-ro
      [ "$src" = blockfile ] && opts=defaults
      loop=$(losetup --show -f --direct-io=$dio -b 4096 "$work/cur.img")
      mount -o "$opts" "$loop" "$work/mnt"
      if [ -n "$overlay" ]; then
        # A container's root as snug makes it: an overlay whose upper
        # directory is on the image.
        mkdir -p "$work/lower" "$work/mnt/upper" "$work/mnt/work" "$work/ovl"
        mount -t overlay overlay -o "lowerdir=$work/lower,upperdir=$work/mnt/upper,workdir=$work/mnt/work" "$work/ovl"
        got["$name|$dio"]+="$(measure "$work/ovl") "
        umount "$work/ovl"
      else
        got["$name|$dio"]+="$(measure "$work/mnt") "
      fi
      umount "$work/mnt"; losetup -d "$loop" 2>/dev/null || true
    done
  done
done

host=$(median <<<"${got[host]}")
printf 'fsync-density: fio 4 KiB random writes, fsync after each, into a new 128 MiB file; IOPS, medians of %d rounds; kernel %s\n\n' "$rounds" "$(uname -r)"
printf '%-30s %12s %12s %10s %10s\n' "image file" "direct I/O" "buffered" "dio/host" "buf/host"
printf '%-30s %12s\n' "host directory (overlayfs)" "$host"
for v in "${variants[@]}"; do
  name=${v%%|*}
  d=$(median <<<"${got["$name|on"]}"); b=$(median <<<"${got["$name|off"]}")
  awk -v n="$name" -v d="$d" -v b="$b" -v h="$host" 'BEGIN { printf "%-30s %12s %12s %9.2fx %9.2fx\n", n, d, b, d / h, b / h }'
done
echo "reproduce: bench/fsync-density.sh $rounds"
