#!/usr/bin/env bash
# Installs what snug's tests and demo drive for real, idempotently:
#   - e2fsprogs (mkfs.ext4, e2fsck, resize2fs, debugfs) and util-linux
#     (losetup), which snug itself uses; gcc and libc6-dev, to build
#     snug-runc (C, static);
#   - runc, umoci and busybox-static from Debian, to build test images and
#     run containers; erofs-utils for the erofs snapshotter make bench
#     compares; podman, which runs snug's hooks from a hooks.d directory;
#     xfsprogs, for a host filesystem that clones files (the online check
#     and the durability test's crash images); fio and sqlite3 for make
#     bench-io;
#   - containerd v2.4.2 (containerd, ctr, containerd-shim-runc-v2), built
#     from the Go module proxy once (about 2 minutes) into $SNUG_CACHE
#     (default /var/cache/snug), then reused; crictl v1.37.0 the same way, for
#     the Kubernetes (CRI) test.
# Prints nothing when everything is in place.
set -euo pipefail
CONTAINERD_VERSION=v2.4.2
cache=${SNUG_CACHE:-/var/cache/snug}
ctrbin=$cache/containerd-$CONTAINERD_VERSION/bin

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
missing=()
for tool in mkfs.ext4 e2fsck resize2fs debugfs; do have "$tool" || missing+=(e2fsprogs); done
have losetup || missing+=(util-linux)
have cc || missing+=(gcc)                          # snug-runc, the runc wrapper, is C
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -n "$(find /usr/lib -name libc.a -print -quit 2>/dev/null)" ] || missing+=(libc6-dev) # ... linked static
have runc || missing+=(runc)
have umoci || missing+=(umoci)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
have mkfs.erofs || missing+=(erofs-utils) # the erofs snapshotter, compared in make bench
have podman || missing+=(podman)          # runs snug's hooks.d files in a test
have mkfs.xfs || missing+=(xfsprogs)      # a reflink-capable host for the online check's test
have fio || missing+=(fio)                # make bench-io's workloads
have sqlite3 || missing+=(sqlite3)        # ... and its SQLite one
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: need ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi

if ! [ -x "$ctrbin/containerd" ] || ! [ -x "$ctrbin/ctr" ] || ! [ -x "$ctrbin/containerd-shim-runc-v2" ]; then
  echo "deps: building containerd $CONTAINERD_VERSION into $ctrbin (about 2 minutes, once)"
  mkdir -p "$ctrbin"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # Outside the snug module, so its go.mod does not pin containerd's deps.
  (cd "$tmp" && GOBIN=$ctrbin GOFLAGS=-mod=mod go install -tags "no_btrfs no_devmapper no_zfs" \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION")
fi

if ! [ -x "$cache/crictl-v1.37.0/bin/crictl" ]; then
  echo "deps: building crictl v1.37.0 into $cache/crictl-v1.37.0/bin (about 30 s, once)"
  mkdir -p "$cache/crictl-v1.37.0/bin"
  tmp2=$(mktemp -d)
  (cd "$tmp2" && GOBIN=$cache/crictl-v1.37.0/bin GOFLAGS=-mod=mod go install sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0)
  rm -rf "$tmp2"
fi
