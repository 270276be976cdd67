#!/usr/bin/env bash
# make demo: a thin image through its life, with its host footprint shown at
# each step. Everything lives in a temporary directory that is cleaned up,
# mounts and loop devices included, however the script ends.
set -euo pipefail
SNUG=${1:-bin/snug}
SNUG=$(readlink -f "$SNUG")
work=$(mktemp -d /tmp/snug-demo.XXXXXX)
img=$work/demo.img
mnt=$work/mnt
cleanup() {
  "$SNUG" image unmount "$img" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$mnt"
cfg=$work/config.toml   # the demo's own policy: defaults, 64 MiB headroom
printf '[window]\nheadroom = "64MiB"\n' > "$cfg"
snug() { "$SNUG" --config "$cfg" "$@"; }
step() { printf '\n== %s\n' "$*"; }
foot() { du -h --apparent-size "$img" | cut -f1 | tr -d '\n'; printf ' apparent, '; du -h "$img" | cut -f1 | tr -d '\n'; echo ' on the host'; }

step "create a 10 GiB thin image"
snug image create --size 10GiB --window 256MiB "$img"
foot

step "mount it and write 1 GiB in 32 top-level directories (ext4 would spread them over the disk)"
snug image mount "$img" "$mnt"
for d in $(seq 1 32); do
  snug image grow --free 96MiB "$img" >/dev/null   # the daemon's watcher will do this
  mkdir "$mnt/dir$d"
  for f in 1 2 3 4; do head -c 8M /dev/urandom > "$mnt/dir$d/f$f"; done
done
sync -f "$mnt"
snug image inspect "$img"

step "delete 7/8 of it: ext4 frees the blocks, the image file keeps them"
for d in $(seq 1 28); do rm -rf "$mnt/dir$d"; done
sync -f "$mnt"
snug image inspect "$img"

step "reclaim: trim freed blocks out of the image and shrink the window back to data + headroom"
snug image reclaim "$img"
snug image inspect "$img"

step "unmount and check it with e2fsck -fn"
snug image unmount "$img"
snug image check "$img" | tail -1
snug image inspect --json "$img"
