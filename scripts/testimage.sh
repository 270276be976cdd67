#!/usr/bin/env bash
# Builds snug's test image as an OCI archive for `ctr images import`, from
# busybox-static and umoci (no registry needed). Three layers:
#   1. busybox and its applets; /data/keep, /data/remove-me, /data/dir-gone/x,
#      /opaque/old
#   2. whiteouts: /data/remove-me and /data/dir-gone deleted, /opaque made
#      opaque (.wh..wh..opq) with /opaque/new; /data/keep changed
#   3. /data/blob: 8 MiB of pseudo-random data (its sha256 in /data/blob.sha256)
# Usage: testimage.sh OUT.tar [REF]   (REF defaults to localhost/snug-test:latest)
# With SNUG_BIGLAYER=1 it adds a fourth layer of ~200 MiB in ~10,000 files.
# SNUG_IMAGE_ENTRYPOINT (e.g. "/bin/sleep 3600") sets an entrypoint: a pause
# image for CRI's pod sandboxes.
set -euo pipefail
out=$1
ref=${2:-localhost/snug-test:latest}
tag=${ref##*:}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export TZ=UTC

layer() { # layer NAME: tar the directory $work/NAME into $work/NAME.tar
  tar --numeric-owner --owner=0 --group=0 -C "$work/$1" -cf "$work/$1.tar" .
}

mkdir -p "$work/l1/bin" "$work/l1/etc" "$work/l1/data/dir-gone" "$work/l1/opaque" "$work/l1/tmp" \
  "$work/l1/proc" "$work/l1/sys" "$work/l1/dev"
cp /bin/busybox "$work/l1/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$work/l1/bin/$applet"
done
chmod 1777 "$work/l1/tmp"
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/l1/etc/passwd"
echo 'root:x:0:' > "$work/l1/etc/group"
echo keep > "$work/l1/data/keep"
echo remove-me > "$work/l1/data/remove-me"
echo x > "$work/l1/data/dir-gone/x"
echo old > "$work/l1/opaque/old"
layer l1

mkdir -p "$work/l2/data" "$work/l2/opaque" "$work/l2/etc"
: > "$work/l2/data/.wh.remove-me"
: > "$work/l2/data/.wh.dir-gone"
: > "$work/l2/opaque/.wh..wh..opq"
echo new > "$work/l2/opaque/new"
echo "keep v2" > "$work/l2/data/keep"
echo 2 > "$work/l2/etc/layer2"
layer l2

mkdir -p "$work/l3/data"
# Pseudo-random but reproducible: the same image every build.
awk 'BEGIN { for (i = 0; i < 400000; i++) printf "snug-test-blob-%d\n", i * 7919 % 1000003 }' \
  > "$work/l3/data/blob"
truncate -s 8388608 "$work/l3/data/blob"
(cd "$work/l3/data" && sha256sum blob > blob.sha256)
layer l3

layers=(l1 l2 l3)
if [ "${SNUG_BIGLAYER:-0}" = 1 ]; then
  mkdir -p "$work/l4/big"
  # ~10,000 files, ~200 MiB: sizes cycle 1 KiB .. 40 KiB.
  python3 - "$work/l4/big" <<'PY'
import os, sys, hashlib
root = sys.argv[1]
seed = b"snug"
for d in range(100):
    sub = os.path.join(root, "d%03d" % d)
    os.makedirs(sub)
    for f in range(100):
        n = ((d * 100 + f) % 40 + 1) * 1024
        seed = hashlib.sha256(seed).digest()
        with open(os.path.join(sub, "f%03d" % f), "wb") as fh:
            fh.write((seed * (n // 32 + 1))[:n])
PY
  layer l4
  layers+=(l4)
fi

oci=$work/oci
umoci init --layout "$oci"
umoci new --image "$oci:$tag"
for l in "${layers[@]}"; do
  umoci raw add-layer --image "$oci:$tag" "$work/$l.tar"
done
umoci config --image "$oci:$tag" --config.cmd /bin/sh --config.workingdir / \
  --config.env PATH=/bin --architecture amd64 --os linux
if [ -n "${SNUG_IMAGE_ENTRYPOINT:-}" ]; then
  entrypoint=()
  for word in $SNUG_IMAGE_ENTRYPOINT; do entrypoint+=(--config.entrypoint "$word"); done
  umoci config --image "$oci:$tag" --clear=config.cmd "${entrypoint[@]}"
fi
tar -C "$oci" -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "$out: $ref, ${#layers[@]} layers"
