#!/usr/bin/env bash
# leftovers.sh: what the tests left on the host, run after `make test`.
# Every test sweeps its own directory, and the conformance cases check that
# snug itself left nothing; this catches what slipped past both: a loop
# device backed by a file (deleted or not) under a test's directory, a mount
# there, or a snug or containerd process started from there. It lists them
# and fails, so a leak fails the run instead of piling up on the host.
set -uo pipefail
tmp="${TMPDIR:-/tmp}"
pattern="^${tmp%/}/(snug-test-|snapshot-suite-|snug-bin-)"
found=0
for f in /sys/block/loop*/loop/backing_file; do
	[ -r "$f" ] || continue
	file=$(cat "$f" 2>/dev/null) || continue
	if [[ "$file" =~ $pattern ]]; then
		dev=${f#/sys/block/}; dev=${dev%%/*}
		echo "leftover loop device: /dev/$dev -> $file"
		found=1
	fi
done
while read -r _ mp fstype _; do
	if [[ "$mp" =~ $pattern ]]; then
		echo "leftover mount: $mp ($fstype)"
		found=1
	fi
done < /proc/mounts
for p in /proc/[0-9]*; do
	cmd=$( { tr "\0" " " < "$p/cmdline"; } 2>/dev/null) || continue
	case "$cmd" in
	*snug*serve*|*containerd*) ;;
	*) continue ;;
	esac
	if [[ "$cmd" =~ ${tmp%/}/(snug-test-|snapshot-suite-|snug-bin-) ]]; then
		echo "leftover process ${p#/proc/}: $cmd"
		found=1
	fi
done
if [ "$found" = 1 ]; then
	echo "leftovers.sh: the tests left the above behind" >&2
	exit 1
fi
echo "leftovers.sh: no loop device, mount or process left by the tests"
