#!/usr/bin/env bash
# Builds erofs-utils 1.8 (Debian trixie's source package) into
# $SNUG_CACHE/erofs-utils-VERSION (default /var/cache/snug), once, for make
# bench-containerd: containerd's erofs differ writes a layer straight from
# its tar with `mkfs.erofs --tar=f`, which Debian 12's erofs-utils 1.5 lacks,
# and trixie's binary package needs a newer libc. The source comes through a
# private apt source list (nothing of the system's apt configuration
# changes); the build dependencies are bookworm's. Prints the bin directory.
set -euo pipefail
VERSION=1.8.6
cache=${SNUG_CACHE:-/var/cache/snug}
prefix=$cache/erofs-utils-$VERSION
if [ -x "$prefix/bin/mkfs.erofs" ]; then
  echo "$prefix/bin"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "erofs-utils.sh: run as root (it installs build dependencies)" >&2
  exit 1
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev autoconf automake libtool pkgconf \
  liblz4-dev uuid-dev zlib1g-dev liblzma-dev libzstd-dev libdeflate-dev libxxhash-dev >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/parts"
cat >"$work/parts/trixie.sources" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
apt_private=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$work/parts"
  -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" -o APT::Sandbox::User=root)
apt-get "${apt_private[@]}" -qq update
(cd "$work" && apt-get "${apt_private[@]}" -qq source --download-only "erofs-utils=$VERSION-1" >/dev/null)
# apt checked the files against the signed Sources index: no keyring is
# needed for the .dsc signature.
dpkg-source --no-check -x "$work/erofs-utils_$VERSION-1.dsc" "$work/src" >/dev/null
(
  cd "$work/src"
  ./autogen.sh >/dev/null 2>&1
  ./configure -q --prefix="$prefix" --disable-fuse --without-selinux --enable-lz4 --enable-lzma \
    --with-zlib --with-libzstd --with-libdeflate >/dev/null
  make -s -j"$(nproc)" >/dev/null
  make -s install >/dev/null
)
"$prefix/bin/mkfs.erofs" --version >/dev/null
echo "$prefix/bin"
