package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestHooksDirWithPodman: podman (like CRI-O) reads OCI hooks from a
// hooks.d directory. With snug's files from contrib/hooks.d, a podman
// container whose root is a snug snapshot has its window readied by
// createRuntime and its image reclaimed by poststop.
func TestHooksDirWithPodman(t *testing.T) {
	podman, err := exec.LookPath("podman")
	if err != nil {
		if os.Getenv("SNUG_REQUIRE_ROOT") == "1" {
			t.Fatalf("needs podman from `make deps` (SNUG_REQUIRE_ROOT=1): %v", err)
		}
		t.Skip("needs podman")
	}
	s := startStack(t, hookPolicy)
	s.importImage()

	// snug's hooks.d files, pointed at this test's binary and policy.
	hooksDir := filepath.Join(s.dir, "hooks.d")
	os.Mkdir(hooksDir, 0o755)
	files, _ := filepath.Glob(repoPath("contrib/hooks.d/*.json"))
	if len(files) != 2 {
		t.Fatalf("contrib/hooks.d has %d files, want 2", len(files))
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		js := strings.Replace(string(b), `"/usr/local/bin/snug-hook"`, `"`+hookBinary(t)+`"`, 1)
		js = strings.Replace(js, `["snug-hook", "hook",`, `["snug-hook", "--config", "`+s.snug.Config+`", "hook",`, 1)
		if js == string(b) {
			t.Fatalf("%s: unexpected layout", f)
		}
		writeFile(t, hooksDir, filepath.Base(f), js)
	}

	// A snug snapshot for the container's root, as podman's --rootfs.
	s.ctr("containers", "create", "--snapshotter", "snug", testImageRef, "podman-root")
	rootfs := filepath.Join(s.dir, "podman-rootfs")
	os.Mkdir(rootfs, 0o755)
	mnt := strings.TrimSpace(s.ctr("snapshots", "--snapshotter", "snug", "mounts", rootfs, "podman-root"))
	if out, err := exec.Command("sh", "-c", mnt).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", mnt, err, out)
	}
	t.Cleanup(func() { unix.Unmount(rootfs, unix.MNT_DETACH) })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// cgroupfs and lowered rlimits: this host has no systemd session and no
	// CAP_SYS_RESOURCE to raise them.
	cmd := exec.CommandContext(ctx, podman, "--cgroup-manager", "cgroupfs", "--runtime", "runc", "--hooks-dir", hooksDir,
		"run", "--rm", "--network", "none", "--name", "snug-podman", "--ulimit", "nproc=1024:1024", "--ulimit", "nofile=1024:1024",
		"--annotation", "io.snugfs.policy=big", "--rootfs", rootfs, "/bin/sh", "-c", churnThenExit)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "done") {
		t.Fatalf("podman run: %v\n%s", err, out)
	}
	im, took := s.waitReclaimed("podman-root", 5*time.Second)
	t.Logf("reclaimed %v after podman's container stopped: footprint %d MiB for %d MiB used", took, im.FootprintBytes>>20, im.UsedBytes>>20)
	if im.State != "stopped" || im.Class != "big" || im.Container == "" {
		t.Errorf("after podman's hooks: %+v", im.Activity)
	}
}
