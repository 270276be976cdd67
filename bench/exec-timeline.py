#!/usr/bin/env python3
"""Where a repaired container's restart spends its time, under load.

    bench/exec-timeline.py REPAIR_JSON EXEC_LOG [CONTAINER]

REPAIR_JSON is make bench-fsck's repair.json, EXEC_LOG what
bench/exectrace logged meanwhile (gzipped if it ends in .gz), CONTAINER the benchmark's container
(bench-fsck). For each round under load, from the restart step's start
(snug's task delete wait, then NewTask) to its end (the task started):

  shim start   restart step start -> containerd execs the shim's start helper
               (containerd's own work on NewTask before the shim: its
               metadata, the rootfs mounts asked of snug, the bundle)
  shim up      start helper exec -> runc create exec (the shim starts and
               takes the create)
  runc create  runc create exec -> exit (the container's init is set up:
               namespaces, mounts, cgroups)
  after        runc create exit -> the restart step's end (the create's
               answer through the shim and containerd to snug, snug's
               Start call, runc start)
Times in ms. A program that ran too briefly to be named (its /proc entry
gone when the event was read) leaves its round out.
"""
import datetime as dt
import gzip
import json
import re
import statistics
import sys


def when(s):
    s = s.rstrip("Z")
    if "." in s:
        head, frac = s.split(".")
        s = head + "." + (frac + "000000")[:6]
    return dt.datetime.fromisoformat(s).replace(tzinfo=dt.timezone.utc)


def load_execs(path, name):
    execs, exits = [], {}
    opener = gzip.open if path.endswith(".gz") else open
    for line in opener(path, "rt", errors="replace"):
        m = re.match(r"(\S+) (exec|exit) (\d+) (.*)", line.rstrip("\n"))
        if not m:
            continue
        t, kind, pid, rest = when(m.group(1)), m.group(2), m.group(3), m.group(4)
        if kind == "exit":
            exits[pid] = t
        elif f"-id {name}" in rest or re.search(rf" create (.* )?{re.escape(name)}$", rest):
            execs.append((t, pid, rest))
    return execs, exits


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    name = sys.argv[3] if len(sys.argv) > 3 else "bench-fsck"
    rounds = json.load(open(sys.argv[1]))["rounds"]
    execs, exits = load_execs(sys.argv[2], name)
    cols = ["shim start", "shim up", "runc create", "after"]
    print(f"{'error':<11} {'restart':>8} " + " ".join(f"{c:>11}" for c in cols))
    got = {c: [] for c in cols}
    by_kind = {}
    for r in rounds:
        if not r.get("under_load") or "restart" not in r.get("steps_start", {}):
            continue
        start = when(r["steps_start"]["restart"])
        end = start + dt.timedelta(milliseconds=r["steps_ms"]["restart"])
        inside = [e for e in execs if start <= e[0] <= end]
        helper = next((e for e in inside if e[2].endswith(" start") and "containerd-shim" in e[2]), None)
        create = next((e for e in inside if re.search(rf" create .*{re.escape(name)}$", e[2])), None)
        if not (helper and create and create[1] in exits):
            print(f"{r['kind']:<11} {r['steps_ms']['restart']:8.0f}   (programs not all in the log)")
            continue
        ms = lambda a, b: (b - a).total_seconds() * 1000
        row = [ms(start, helper[0]), ms(helper[0], create[0]), ms(create[0], exits[create[1]]),
               ms(exits[create[1]], end)]
        for c, v in zip(cols, row):
            got[c].append(v)
        by_kind.setdefault(r["kind"], []).append([r["steps_ms"]["restart"]] + row)
        print(f"{r['kind']:<11} {r['steps_ms']['restart']:8.0f} " + " ".join(f"{v:11.0f}" for v in row))
    for kind, rows in sorted(by_kind.items()):
        meds = [statistics.median(col) for col in zip(*rows)]
        print(f"{'median ' + kind[:4]:<11} {meds[0]:8.0f} " + " ".join(f"{m:11.0f}" for m in meds[1:]))
    if got["shim start"]:
        print(f"{'median':<11} {'':>8} " + " ".join(f"{statistics.median(got[c]):11.0f}" for c in cols))


if __name__ == "__main__":
    main()
