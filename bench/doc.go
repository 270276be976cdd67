// Package bench holds snug's benchmarks. They run real workloads on the real
// kernel and compare snug with references measured in the same run, because
// this machine is noisy: `make bench` writes JSON and a table to
// bench/results/.
package bench
