#!/usr/bin/env bash
# make demo: a throw-away containerd with snug as its snapshotter, the test
# image imported through snug, a container writing data on its own thin
# image, `snug status` showing what each image costs the host, and an ext4
# error in that image repaired while the container is restarted.
# Everything is torn down at the end, also on failure or Ctrl-C.
set -euo pipefail
snug=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
here=$(cd "$(dirname "$0")" && pwd)
export PATH=${SNUG_CACHE:-/var/cache/snug}/containerd-v2.4.2/bin:/usr/sbin:/sbin:$PATH
dir=$(mktemp -d /tmp/snug-demo.XXXXXX)
trap '"$here/stack.sh" down "$dir"; rm -rf "$dir"' EXIT
ctr() { command ctr -a "$dir/containerd.sock" "$@" 2> >(grep -v DEPRECATION >&2); }
step() { printf '\n== %s\n' "$*"; }

step "starting snug serve and containerd in $dir"
SNUG_EXTRA_POLICY=$'[window]\ninitial = "64MiB"\nheadroom = "64MiB"' "$here/stack.sh" up "$dir" "$snug"
"$here/testimage.sh" "$dir/image.tar" localhost/snug-test:latest >/dev/null

step "ctr images import --snapshotter snug (3 layers)"
ctr images import --snapshotter snug --base-name localhost/snug-test "$dir/image.tar" >/dev/null
ctr snapshots --snapshotter snug ls

step "ctr run --rm --snapshotter snug ... echo ok"
ctr run --rm --snapshotter snug localhost/snug-test:latest hello /bin/sh -c 'echo ok; cat /data/keep'

step "a container with a 1 GiB quota, snug's hooks (snug-runc), writes 100 MiB, deletes 60 MiB and keeps running"
ctr run -d --runc-binary "$(dirname "$snug")/snug-runc" --snapshotter snug --snapshotter-label containerd.io/snapshot/max-size=1073741824 \
  localhost/snug-test:latest writer /bin/sh -c \
  'mkdir /out && for i in $(seq 1 10); do dd if=/dev/urandom of=/out/$i bs=1M count=10 2>/dev/null; done;
   rm /out/[1-6]; sync; touch /done; sleep 3600' >/dev/null
for _ in $(seq 1 100); do
  ctr tasks exec --exec-id probe writer test -e /done 2>/dev/null && break
  sleep 0.1
done
ctr tasks exec --exec-id df writer df -h /

step "snug status (the watcher already trimmed what the writer deleted)"
sleep 1
"$snug" --config "$dir/snug.toml" status

step "an ext4 error in the writer's image: snug pauses, checks, repairs and restarts only that container"
upper=$(ctr tasks exec --exec-id mountinfo writer cat /proc/self/mountinfo |
  sed -n 's/.* - overlay overlay .*upperdir=\([^,]*\).*/\1/p' | head -n 1)
dev=$(findmnt -no SOURCE "${upper%/upper}")
echo "raising an error through /sys/fs/ext4/${dev##*/}/trigger_fs_error"
echo "snug demo" > "/sys/fs/ext4/${dev##*/}/trigger_fs_error"
for _ in $(seq 1 50); do
  "$snug" --config "$dir/snug.toml" incidents | grep -qE '^incident .*: (RESOLVED|QUARANTINED)' && break
  sleep 0.1
done
"$snug" --config "$dir/snug.toml" incidents
ctr tasks ls

step "the writer stops: its poststop hook has the image reclaimed"
ctr tasks kill -s KILL writer
for _ in $(seq 1 50); do
  ctr tasks ls | grep -q 'writer.*STOPPED' && break
  sleep 0.1
done
ctr tasks delete writer >/dev/null
sleep 2
"$snug" --config "$dir/snug.toml" status

step "ctr snapshots --snapshotter snug usage"
ctr snapshots --snapshotter snug usage

step "loop devices and mounts of this snug"
losetup -l -O NAME,BACK-FILE,RO,DIO | grep -E "NAME|$dir" || true
grep -c " $dir/snug/snapshots/" /proc/self/mountinfo | sed 's/$/ image mounts/'
step "tearing down"
