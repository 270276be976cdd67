#!/usr/bin/env python3
"""io-rounds.py: one workload of `make bench-io` round by round.

bench-io reports medians over its rounds; this prints each round's figure
of WORKLOAD as a ratio to overlayfs's figure in the same round, for each
results file given (bench/results/io*.json), so a snapshotter that gets
faster after its first round shows. A layer that keeps the host blocks its
container wrote and deleted (erofs's ext4 layer never gives them back)
writes into blocks the host has already allocated from the second round on.

Usage: bench/io-rounds.py WORKLOAD FILE...   (WORKLOAD: rand_write_fsync,
meta, sqlite, seq_write, rand_read, seq_read)
"""
import json
import sys


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    workload = argv[1]
    for path in argv[2:]:
        with open(path) as f:
            results = json.load(f)
        samples = results["samples"].get(workload)
        if samples is None:
            print(f"{path}: no workload {workload!r}", file=sys.stderr)
            return 1
        base = samples["overlayfs"]
        cells = []
        for name in sorted(samples):
            if name == "overlayfs":
                continue
            ratios = [v / b for v, b in zip(samples[name], base)]
            cells.append(f"{name} " + " ".join(f"{r:.2f}" for r in ratios))
        print(f"{path.rsplit('/', 1)[-1]}: " + "; ".join(cells))
    print(f"ratios to overlayfs in the same round, rounds in order; reproduce: bench/io-rounds.py {workload} FILE...")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
