#!/usr/bin/env bash
# Installs the host tools snug drives: e2fsprogs (mkfs.ext4, e2fsck,
# resize2fs, debugfs) and util-linux (losetup, used by the demo to show the
# loop devices). Idempotent: does nothing when they are present.
set -euo pipefail
missing=()
for tool in mkfs.ext4 e2fsck resize2fs debugfs; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=(e2fsprogs)
done
command -v losetup >/dev/null 2>&1 || [ -x /usr/sbin/losetup ] || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: need ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi
