# bench/fio-lib.sh: what the host-level fsync scripts (fsync-density.sh,
# loop-floor.sh, fsync-layout.sh) share. Source it from bench/NAME.sh, after
# `set -euo pipefail`:
#   . "$(dirname "$0")/fio-lib.sh"
#   fio_workdir NAME HOSTDIR   fails unless fio is there; sets $work, a fresh
#                              directory under HOSTDIR with mnt/ in it,
#                              removed at exit with every mount below it and
#                              every loop device over a file in it
#   snug_mkfs IMG SIZE JOURNAL INODES
#                              a sparse ext4 image of SIZE with snug's mkfs
#                              options, -J JOURNAL (size=4, ...)
#   median                     the median of the numbers on stdin
#   flushes DEV                the cache flushes DEV (loop3, vda) completed

fio_workdir() {
  command -v fio >/dev/null || { echo "$1: needs fio" >&2; exit 1; }
  mkdir -p "$2"
  work=$(mktemp -d "$2/$1.XXXXXX")
  mkdir -p "$work/mnt"
  trap fio_cleanup EXIT
}

fio_cleanup() {
  local m l
  # The latest mount first: an overlay before the image under it.
  for m in $(awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | tac); do
    umount "$m" || true
  done
  for l in $(losetup -l -n -O NAME,BACK-FILE | awk -v w="$work/" 'index($2, w) == 1 { print $1 }'); do
    losetup -d "$l" 2>/dev/null || true
  done
  rm -rf "$work"
}

snug_mkfs() {
  truncate -s "$2" "$1"
  mkfs.ext4 -F -q -t ext4 -b 4096 -m 0 -O ^resize_inode,metadata_csum_seed -J "$3" -N "$4" \
    -E lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0 "$1"
}

median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

flushes() { awk -v d="$1" '$3 == d { print $19 }' /proc/diskstats; }
