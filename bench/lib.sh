# bench/lib.sh: what the shell benchmarks that drive a throw-away stack
# (scripts/stack.sh) share. Source it from bench/NAME.sh:
#   . "$(dirname "$0")/lib.sh"
#   bench_needs NAME TOOL...   sets $here (the repository), puts the cached
#                              containerd on PATH, fails unless every TOOL
#                              (and bin/snug) is there
#   bench_workdir PREFIX       a fresh directory under /var/lib (prints it)
#   bench_stack PREFIX BINARY  a throw-away stack (scripts/stack.sh) with snug
#                              serve BINARY in a fresh $dir, torn down and
#                              removed at exit, the test image in
#                              $dir/image.tar; a caller's own EXIT trap must
#                              call bench_stack_down
#   bench_debug_snug DIR       writes DIR/snug-debug: bin/snug with
#                              --log-level debug (each call's time logged)
#   bench_call_times LOG FROM METHOD
#                              p50, p90 and max of the METHOD calls (Prepare,
#                              Remove...) that snug-debug logged in LOG after
#                              its line FROM

bench_needs() {
  local name=$1 tool
  shift
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  export PATH=${SNUG_CACHE:-/var/cache/snug}/containerd-v2.4.2/bin:/usr/sbin:/sbin:$PATH
  for tool in "$@" "$here/bin/snug"; do
    command -v "$tool" >/dev/null || { echo "$name: needs $tool (make deps build)" >&2; exit 1; }
  done
}

bench_workdir() { mktemp -d "/var/lib/$1.XXXXXX"; }

bench_stack() {
  dir=$(bench_workdir "$1")
  trap bench_stack_down EXIT
  "$here/scripts/stack.sh" up "$dir" "$2" >/dev/null
  "$here/scripts/testimage.sh" "$dir/image.tar" localhost/snug-test:latest >/dev/null
}

bench_stack_down() { "$here/scripts/stack.sh" down "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"; }

bench_debug_snug() {
  printf '#!/bin/sh\nexec %q "$@" --log-level debug\n' "$here/bin/snug" >"$1/snug-debug"
  chmod +x "$1/snug-debug"
}

bench_call_times() {
  tail -n +"$(($2 + 1))" "$1" | sed -n "s|.*Snapshots/$3 took=||p" | awk '
    /ms$/ { sub(/ms$/, ""); print; next }
    /µs$/ { sub(/µs$/, ""); print $1 / 1000; next }
    /s$/ { sub(/s$/, ""); print $1 * 1000 }' | sort -g | awk -v m="$3" '
    { a[NR] = $1 }
    END { if (NR) printf "%s p50 %.1f p90 %.1f max %.1f ms (%d)", m, a[int((NR + 1) / 2)], a[int(NR * 0.9)], a[NR], NR; else printf "%s none", m }'
}
