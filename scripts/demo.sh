#!/usr/bin/env bash
# make demo: a throw-away containerd with snug as its snapshotter, the test
# image imported through snug, a container writing data on its own thin
# image, `snug status` showing what each image costs the host, a directory
# block of another container's image damaged by hand (debugfs) and repaired
# while that container is restarted, and an image no repair can make whole
# quarantined.
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

# image_of CONTAINER: the image file under a running container's root, from
# its overlay's upper directory, the mount under it and that loop device.
image_of() {
  local upper dev
  upper=$(ctr tasks exec --exec-id "mi-$RANDOM" "$1" cat /proc/self/mountinfo |
    sed -n 's/.* - overlay overlay .*upperdir=\([^,]*\).*/\1/p' | head -n 1)
  dev=$(findmnt -no SOURCE "${upper%/upper}")
  losetup -nO BACK-FILE "$dev" | sed 's/ *$//'
}
# ended: how many incidents have ended; newest: the newest one, whole.
ended() { "$snug" --config "$dir/snug.toml" incidents | grep -cE '^incident .*: (RESOLVED|QUARANTINED)' || true; }
newest() { "$snug" --config "$dir/snug.toml" incidents | awk '/^incident /{b=""} {b=b $0 "\n"} END{printf "%s", b}'; }
# wait_incident N: until more than N incidents have ended, evicting the
# page cache meanwhile so that the container's next read meets the damage.
wait_incident() {
  for _ in $(seq 1 100); do
    [ "$(ended)" -gt "$1" ] && return 0
    echo 3 > /proc/sys/vm/drop_caches
    sleep 0.1
  done
  echo "no incident ended in 10 s" >&2
}
reader='mkdir -p /d; for i in $(seq 1 40); do echo $i > /d/f$i; done; sync; while true; do ls /d >/dev/null; sleep 0.1; done'

step "a directory block of a running container's image damaged by hand: snug stops, repairs and restarts only that container"
ctr run -d --snapshotter snug localhost/snug-test:latest victim /bin/sh -c "$reader" >/dev/null
sleep 1
img=$(image_of victim)
"$snug" --config "$dir/snug.toml" check victim >/dev/null  # its freeze checkpoints the journal first
before=$(ended)
echo "debugfs -w -R 'zap_block -f /upper/d -p 0x5a 0' $img"
debugfs -w -R "zap_block -f /upper/d -p 0x5a 0" "$img" >/dev/null 2>&1
wait_incident "$before"
newest
sleep 0.5
ctr tasks ls

step "an image no repair can make whole (its file truncated below a directory's blocks): quarantined"
ctr run -d --snapshotter snug localhost/snug-test:latest doomed /bin/sh -c "$reader" >/dev/null
sleep 1
img=$(image_of doomed)
"$snug" --config "$dir/snug.toml" check doomed >/dev/null
before=$(ended)
blk=$(debugfs -R "bmap /upper/d 0" "$img" 2>/dev/null | tail -n 1)
echo "truncate -s $((blk * 4096)) $img"
truncate -s $((blk * 4096)) "$img"
wait_incident "$before"
newest | head -n 6
"$snug" --config "$dir/snug.toml" status | grep -E "KIND|doomed"
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
