#!/usr/bin/env bash
# exec-cost.sh: what one extra exec costs on this machine, the floor of any
# runc wrapper's overhead per runc call. Prints the mean of N runs (default
# 300) of: /bin/true; /bin/sh exec'ing /bin/true (what snug-runc was);
# a static C program exec'ing /bin/true (what snug-runc is, needs gcc);
# snug-hook's Go start.
set -euo pipefail
n=${1:-300}
here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mean() { # label, command...
  local label=$1; shift
  local s e
  s=$(date +%s%N)
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 || true; done
  e=$(date +%s%N)
  printf '%-40s %6d us\n' "$label" $(( (e - s) / n / 1000 ))
}
mean "/bin/true" /bin/true
mean "sh -c 'exec /bin/true'" /bin/sh -c 'exec /bin/true'
if command -v gcc >/dev/null; then
  printf '#include <unistd.h>\nint main(int c, char **v) { (void)c; execv("/bin/true", v); return 127; }\n' > "$tmp/w.c"
  gcc -O2 -static -o "$tmp/w" "$tmp/w.c"
  mean "static C exec'ing /bin/true" "$tmp/w"
fi
if [ -x "$here/bin/snug-hook" ]; then
  mean "snug-hook version (static Go)" "$here/bin/snug-hook" version
fi
