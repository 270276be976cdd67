#!/bin/sh
# Builds snug-runc, the runc wrapper (cmd/snug-runc/snug-runc.c), into $1:
# static, so each runc call it passes through costs one small exec and no
# dynamic loading. `make build` and the integration tests both use this.
set -eu
out=${1:?usage: build-snug-runc.sh OUTPUT}
src=$(dirname "$0")/../cmd/snug-runc/snug-runc.c
${CC:-cc} -std=c11 -O2 -Wall -Wextra -Werror -static -s -o "$out" "$src"
