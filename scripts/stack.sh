#!/usr/bin/env bash
# Starts and stops a throw-away containerd with snug as its proxy
# snapshotter, all state in one directory. Used by `make demo` and the
# benchmarks; the Go integration tests start the same pieces themselves.
#   stack.sh up DIR SNUG_BINARY    start snug serve and containerd, wait until ready
#   stack.sh down DIR              stop both, unmount and detach everything in DIR
# In DIR: snug.toml, containerd.toml, *.log, containerd.sock (for ctr -a).
# SNUG_EXTRA_POLICY adds to snug.toml, SNUG_EXTRA_UNPACK to containerd's
# unpack_config; SNUG_NO_DIFFER=1 leaves snug's differ out of it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${SNUG_CACHE:-/var/cache/snug}
export PATH=$cache/containerd-v2.4.2/bin:/usr/sbin:/sbin:$PATH

wait_socket() { # wait_socket PATH PID NAME LOG
  for _ in $(seq 1 300); do
    [ -S "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || { echo "$3 exited; its log:" >&2; cat "$4" >&2; return 1; }
    sleep 0.1
  done
  echo "$3 did not start in 30s; its log:" >&2; cat "$4" >&2; return 1
}

up() {
  local dir=$1 snug=$2
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  cat > "$dir/snug.toml" <<TOML
root = "$dir/snug"
address = "$dir/run/snug.sock"
control_address = "$dir/run/control.sock"
containerd_address = "$dir/containerd.sock"
${SNUG_EXTRA_POLICY:-}
TOML
  "$snug" --config "$dir/snug.toml" serve > "$dir/snug.log" 2>&1 &
  echo $! > "$dir/snug.pid"
  wait_socket "$dir/run/snug.sock" "$(cat "$dir/snug.pid")" "snug serve" "$dir/snug.log"
  local off='"io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.sandbox.controller.v1.shim", "io.containerd.nri.v1.nri"'
  sed -e "s|@DIR@|$dir|g" -e "s|@SNUG_SOCKET@|$dir/run/snug.sock|g" -e "s|@EXTRA_UNPACK@|${SNUG_EXTRA_UNPACK:-}|" \
    -e "s|@DISABLED_PLUGINS@|$off|" \
    "$here/containerd.toml.in" > "$dir/containerd.toml"
  # SNUG_NO_DIFFER=1: snug's layers unpacked by containerd's walking differ
  # into dirs on the host, packed at Commit (as without snug's differ).
  if [ "${SNUG_NO_DIFFER:-}" = 1 ]; then
    sed -i 's/, differ = "snug-diff"//' "$dir/containerd.toml"
  fi
  # SNUG_CONFIG, SNUG_CONTROL: snug-runc and its hooks (run by the shim)
  # use this stack's daemon.
  SNUG_CONFIG="$dir/snug.toml" SNUG_CONTROL="$dir/run/control.sock" containerd --config "$dir/containerd.toml" > "$dir/containerd.log" 2>&1 &
  echo $! > "$dir/containerd.pid"
  wait_socket "$dir/containerd.sock" "$(cat "$dir/containerd.pid")" containerd "$dir/containerd.log"
}

stop_pid() { # stop_pid PIDFILE
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

down() {
  local dir=$1
  [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd)
  if [ -S "$dir/containerd.sock" ]; then
    # Kill what still runs, so its shim and mounts go.
    for ns in $(ctr -a "$dir/containerd.sock" namespaces ls -q 2>/dev/null); do
      for t in $(ctr -a "$dir/containerd.sock" -n "$ns" tasks ls -q 2>/dev/null); do
        ctr -a "$dir/containerd.sock" -n "$ns" tasks kill -s KILL "$t" >/dev/null 2>&1 || true
        ctr -a "$dir/containerd.sock" -n "$ns" tasks delete -f "$t" >/dev/null 2>&1 || true
      done
    done
  fi
  stop_pid "$dir/containerd.pid"
  stop_pid "$dir/snug.pid"
  # Deepest mounts first; then any loop device backed by a file in DIR.
  # (snug unmounts the images nothing uses when it stops: there may be none.)
  { grep -F " $dir/" /proc/self/mountinfo || true; } | awk '{ print $5 }' | awk '{ print length, $0 }' |
    sort -rn | cut -d' ' -f2- | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
  losetup -nO NAME,BACK-FILE 2>/dev/null | awk -v d="$dir/" 'index($2, d) == 1 { print $1 }' |
    while read -r dev; do losetup -d "$dev" || true; done
}

case "${1:-}" in
  up) up "$2" "$3" ;;
  down) down "$2" ;;
  *) echo "usage: stack.sh up DIR SNUG_BINARY | down DIR" >&2; exit 2 ;;
esac
