#!/usr/bin/env python3
"""What runc's processes wait for while containers start (root; Linux).

    bench/runc-states.py SECONDS [LOG]

Samples every 50 ms, for SECONDS, each process whose name starts with
runc (runc, runc:[0:PARENT], runc:[2:INIT], ...): its state (R runnable,
D blocked in the kernel, S sleeping), its CPU cgroup and the top of its
kernel stack; writes the samples to LOG (if given) and prints how many
fell in each state, by cgroup (the host's root, the containers', snug's
/snug-repair), and the kernel functions the blocked ones (D) waited in.
Used with make bench-fsck's load (docs/benchmarks.md).
"""
import collections
import os
import sys
import time


def sample():
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            if not comm.startswith("runc"):
                continue
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{pid}/stack") as f:
                stack = [l.split(" ", 1)[-1].split("+")[0] for l in f.read().splitlines()[:6]]
            with open(f"/proc/{pid}/cgroup") as f:
                cg = "?"
                for l in f.read().splitlines():
                    parts = l.split(":", 2)
                    if parts[0] == "0" or "cpu" in parts[1].split(","):
                        cg = parts[2]
            yield comm, state, cg, ";".join(stack)
        except OSError:
            continue  # gone meanwhile


def group(cg):
    if cg in ("/", "/snug-repair"):
        return cg
    return "container cgroups"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    end = time.time() + float(sys.argv[1])
    log = open(sys.argv[2], "w") if len(sys.argv) > 2 else None
    states, blocked = collections.Counter(), collections.Counter()
    while time.time() < end:
        now = time.time()
        for comm, state, cg, stack in sample():
            states[(group(cg), state)] += 1
            if state == "D":
                blocked[stack.split(";")[0]] += 1
            if log:
                log.write(f"{now:.3f} {comm} {state} {cg} {stack}\n")
        time.sleep(0.05)
    total = sum(states.values())
    print(f"{total} samples of runc's processes")
    for (g, s), n in sorted(states.items(), key=lambda kv: -kv[1]):
        print(f"  {g:<18} {s}  {n:6d}  {100 * n / max(total, 1):5.1f}%")
    print("blocked (D) in:")
    for fn, n in blocked.most_common(10):
        print(f"  {n:6d}  {fn}")


if __name__ == "__main__":
    main()
