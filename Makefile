# snug: `make demo` shows it, `make test` proves it. Both install what they
# need on a fresh Debian 12 machine (root): e2fsprogs, util-linux.
GO      ?= go
BIN     := bin
SNUG    := $(BIN)/snug
PKGS    := ./...

.PHONY: all build deps demo test test-unit test-root fuzz soak bench bench-imagefs bench-containerd bench-churn bench-daemon bench-fsck bench-io vet clean

all: build

build:
	$(GO) build -o $(SNUG) ./cmd/snug
	CGO_ENABLED=0 $(GO) build -ldflags="-s -w" -o $(BIN)/snug-hook ./cmd/snug-hook
	scripts/build-snug-runc.sh $(BIN)/snug-runc

# deps installs the host tools the root tests and the demo drive for real.
deps:
	@scripts/deps.sh

demo: deps build
	@scripts/demo.sh $(SNUG)

vet:
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet $(PKGS)

# test: unit tests, then the root tests on the real kernel. SNUG_REQUIRE_ROOT=1
# turns a missing dependency into a failure, never a skip. leftovers.sh then
# fails the run on any loop device, mount or process the tests left. The
# tests make their directories in a TMPDIR of this run's own, so what a
# benchmark or another run on the same host holds meanwhile is not counted
# (other users may traverse it, as /tmp: a test runs a client as nobody);
# it is removed when nothing was left in it, kept for a look otherwise.
test: deps vet
	tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/snug-make-test.XXXXXX") && chmod 755 "$$tmp" && \
	SNUG_REQUIRE_ROOT=1 TMPDIR="$$tmp" $(GO) test -count=1 -timeout 20m $(PKGS); rc=$$?; \
	TMPDIR="$$tmp" scripts/leftovers.sh || rc=1; \
	if [ $$rc = 0 ]; then rm -rf "$$tmp"; else echo "make test: the tests' directory is kept: $$tmp" >&2; fi; \
	exit $$rc

# soak: TestLoad (part of make test, for 60 s there) for SNUG_LOAD_SECONDS
# (180): 50 containers started and removed at once, round after round, on
# snug and overlayfs, then 300 mounted snapshots; percentiles, memory, CPU,
# status and reconcile times in bench/results/load.{json,txt}.
SNUG_LOAD_SECONDS ?= 180
soak: deps
	@mkdir -p bench/results
	SNUG_REQUIRE_ROOT=1 SNUG_LOAD_SECONDS=$(SNUG_LOAD_SECONDS) SNUG_BENCH_OUT=$(CURDIR)/bench/results \
	  $(GO) test -count=1 -timeout 30m -run '^TestLoad$$' -v ./integration

# fuzz runs every fuzzer for FUZZTIME each (default 30s).
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./config -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./config -run '^$$' -fuzz '^FuzzParseSize$$' -fuzztime $(FUZZTIME)
	$(GO) test ./config -run '^$$' -fuzz '^FuzzValidClassName$$' -fuzztime $(FUZZTIME)
	$(GO) test ./imagefs -run '^$$' -fuzz '^FuzzParseSuperblock$$' -fuzztime $(FUZZTIME)
	$(GO) test ./imagefs -run '^$$' -fuzz '^FuzzDecodeFiemap$$' -fuzztime $(FUZZTIME)
	$(GO) test ./config -run '^$$' -fuzz '^FuzzParseMaxSize$$' -fuzztime $(FUZZTIME)
	$(GO) test ./config -run '^$$' -fuzz '^FuzzAnnotatedQuota$$' -fuzztime $(FUZZTIME)
	$(GO) test ./config -run '^$$' -fuzz '^FuzzParseInodes$$' -fuzztime $(FUZZTIME)
	$(GO) test ./imagefs -run '^$$' -fuzz '^FuzzParseQuota$$' -fuzztime $(FUZZTIME)
	$(GO) test ./hooks -run '^$$' -fuzz '^FuzzReadState$$' -fuzztime $(FUZZTIME)
	$(GO) test ./hooks -run '^$$' -fuzz '^FuzzParseRuncArgs$$' -fuzztime $(FUZZTIME)
	$(GO) test ./hooks -run '^$$' -fuzz '^FuzzBundleConfig$$' -fuzztime $(FUZZTIME)
	$(GO) test ./imagefs -run '^$$' -fuzz '^FuzzLayerFromTar$$' -fuzztime $(FUZZTIME)
	$(GO) test ./hooks -run '^$$' -fuzz '^FuzzRuncWrapperArgs$$' -fuzztime $(FUZZTIME)
	$(GO) test ./fsck -run '^$$' -fuzz '^FuzzParseEvents$$' -fuzztime $(FUZZTIME)
	$(GO) test ./control -run '^$$' -fuzz '^FuzzControlAPI$$' -fuzztime $(FUZZTIME)
	$(GO) test ./imagefs -run '^$$' -fuzz '^FuzzEventFsids$$' -fuzztime $(FUZZTIME)
	SNUG_REQUIRE_ROOT=1 $(GO) test ./snapshotter -run '^$$' -fuzz '^FuzzSnapshotKeys$$' -fuzztime $(FUZZTIME)
	SNUG_REQUIRE_ROOT=1 $(GO) test -count=1 ./snapshotter -run '^TestSweepFuzzLeftovers$$'

# bench-imagefs: footprint and swell of the churn workload in four modes,
# plus Create/Grow/Reclaim times, and the two ways to commit a layer;
# JSON and a table in bench/results/.
# SNUG_BENCH_QUOTA_GIB picks the image size (default: 4 and 32).
SNUG_BENCH_QUOTA_GIB ?= 4 32
bench-imagefs: deps
	@mkdir -p bench/results
	@for q in $(SNUG_BENCH_QUOTA_GIB); do \
	  SNUG_BENCH_QUOTA_GIB=$$q SNUG_REQUIRE_ROOT=1 SNUG_BENCH_OUT=$(CURDIR)/bench/results \
	    $(GO) test -count=1 -timeout 60m -run '^TestChurnBenchmark$$' -v ./bench || exit 1; \
	done
	SNUG_REQUIRE_ROOT=1 SNUG_BENCH_OUT=$(CURDIR)/bench/results \
	  $(GO) test -count=1 -timeout 10m -run '^(TestCommitOptionsBenchmark|TestTemplateBenchmark|TestCeilingBenchmark|TestLayerFromTarBenchmark)$$' -v ./bench

# bench-containerd: image import time and `ctr run --rm ... true` latency of
# snug, overlayfs, erofs and blockfile in one containerd, round robin;
# medians and ratios to overlayfs in bench/results/containerd.{json,txt}.
# SNUG_BENCH_IMPORTS and SNUG_BENCH_RUNS set the repetitions (4 and 15);
# SNUG_BENCH_BURST containers at once (50), SNUG_BENCH_BURST_ROUNDS times
# (2), give the latency percentiles of a burst.
# erofs runs with its tar differ, on erofs-utils 1.8 built from Debian
# trixie's source by scripts/erofs-utils.sh (once, into $SNUG_CACHE,
# /var/cache/snug by default).
bench-containerd: deps
	@mkdir -p bench/results
	SNUG_BENCH_EROFS_BIN=$$(scripts/erofs-utils.sh) SNUG_REQUIRE_ROOT=1 SNUG_BENCH_OUT=$(CURDIR)/bench/results \
	  $(GO) test -count=1 -timeout 60m -run '^TestContainerdBenchmark$$' -v ./integration

# bench-churn: the churn workload in a real container on snug, blockfile
# (scratch image of the same quota) and overlayfs: footprint and used after
# every round and after the stop; bench/results/churn-container.{json,txt,png}.
bench-churn: deps
	@mkdir -p bench/results
	SNUG_REQUIRE_ROOT=1 SNUG_BENCH_OUT=$(CURDIR)/bench/results \
	  $(GO) test -count=1 -timeout 60m -run '^TestChurnInContainerBenchmark$$' -v ./integration

# bench-daemon: the daemon's cost with 200 idle mounted images, and the
# latency the hooks add to `ctr run` and `ctr task kill`;
# bench/results/daemon.{json,txt}.
bench-daemon: deps
	@mkdir -p bench/results
	SNUG_REQUIRE_ROOT=1 SNUG_BENCH_OUT=$(CURDIR)/bench/results \
	  $(GO) test -count=1 -timeout 60m -run '^(TestIdleDaemonBenchmark|TestHookLatencyBenchmark|TestHookCostBreakdown)$$' -v ./integration

# bench-fsck: the error monitor on a 1 GiB image with 10,000 files in a
# running container: error to running again, step by step, and how long the
# online check holds writes (ext4 host, and XFS with reflink);
# bench/results/repair.{json,txt}.
bench-fsck: deps
	@mkdir -p bench/results
	SNUG_REQUIRE_ROOT=1 SNUG_BENCH_OUT=$(CURDIR)/bench/results \
	  $(GO) test -count=1 -timeout 30m -run '^TestRepairBenchmark$$' -v ./integration

# bench-io: a container's I/O (fio, small files, SQLite) on snug,
# overlayfs, blockfile and erofs's ext4 writable layer in one containerd,
# round robin; medians and ratios to overlayfs in bench/results/io.{json,txt,png}.
# SNUG_BENCH_ROUNDS (3) sets the rounds; SNUG_BENCH_IO_POLICY adds TOML to
# snug's policy, SNUG_BENCH_IO_VARIANT runs a second snug ("snugb") with
# that TOML added, side by side (SNUG_BENCH_IO_VARIANT_BINARY: from that
# snug binary, a build of other code), SNUG_BENCH_IO_CLASS=NAME adds a second
# snug container whose snapshot label picks class NAME of that policy
# ("snug.NAME"), and SNUG_BENCH_IO_NAME names the results (io-NAME.*).
bench-io: deps
	@mkdir -p bench/results
	SNUG_REQUIRE_ROOT=1 SNUG_BENCH_OUT=$(CURDIR)/bench/results \
	  $(GO) test -count=1 -timeout 60m -run '^TestIOBenchmark$$' -v ./integration

bench: bench-imagefs bench-containerd bench-churn bench-daemon bench-fsck bench-io

clean:
	rm -rf $(BIN)
