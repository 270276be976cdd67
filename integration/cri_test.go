package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/fsck"
	"github.com/snugfs/snug/internal/roottest"
)

// crictlBin is where scripts/deps.sh builds crictl.
func crictlBin(t *testing.T) string {
	t.Helper()
	p := filepath.Join(cacheDir(), "crictl-v1.37.0", "bin", "crictl")
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("SNUG_REQUIRE_ROOT") == "1" {
			t.Fatalf("needs crictl from `make deps` (SNUG_REQUIRE_ROOT=1): %v", err)
		}
		t.Skip("needs crictl from `make deps`")
	}
	return p
}

// TestKubernetesCRI runs a pod through containerd's CRI plugin, the path
// kubelet takes, with snug as CRI's snapshotter: the pod's containers get
// their root filesystems from snug's images.
func TestKubernetesCRI(t *testing.T) {
	requireStack(t)
	crictl := crictlBin(t)
	dir := roottest.TempDir(t)
	pause := filepath.Join(dir, "pause.tar")
	build := exec.Command("bash", repoPath("scripts/testimage.sh"), pause, "localhost/snug-pause:latest")
	build.Env = append(os.Environ(), "SNUG_IMAGE_ENTRYPOINT=/bin/sleep 3600")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("pause image: %v\n%s", err, out)
	}
	// snug's hooks come in through the runc wrapper, as the runtime's
	// BinaryName; the class annotation is passed on to the OCI spec.
	wrapper := installWrapper(t, filepath.Join(dir, "bin"))
	cri := fmt.Sprintf(`
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "snug"
  stats_collect_period = 1
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "localhost/snug-pause:latest"
[plugins."io.containerd.cri.v1.runtime"]
  # Lowering oom_score_adj needs CAP_SYS_RESOURCE, which this host lacks.
  restrict_oom_score_adj = true
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  container_annotations = ["io.snugfs.*", "containerd.io/snapshot/max-size"]
  pod_annotations = ["io.snugfs.*", "containerd.io/snapshot/max-size"]
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
  BinaryName = %q
  # This stack's own runc state, not the host's /run/containerd/runc.
  Root = %q
`, wrapper, filepath.Join(dir, "runc"))
	s := startStackWith(t, hookPolicy, "", cri)
	s.ctr("-n", "k8s.io", "images", "import", "--snapshotter", "snug", "--base-name", "localhost/snug-test", testImage(t))
	s.ctr("-n", "k8s.io", "images", "import", "--snapshotter", "snug", "--base-name", "localhost/snug-pause", pause)
	// CRI's image cache reads images at start-up: restart containerd.
	s.restartContainerd()

	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		ep := "unix://" + s.socket()
		cmd := exec.CommandContext(ctx, crictl, append([]string{"--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "60s"}, args...)...)
		cmd.Env = append(os.Environ(), "PATH="+containerdBin()+":/usr/sbin:/usr/bin:/sbin:/bin")
		var stderr strings.Builder
		cmd.Stderr = &stderr // warnings; only stdout is the answer
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("crictl %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
		}
		return strings.TrimSpace(string(out))
	}
	podJSON := writeFile(t, dir, "pod.json", fmt.Sprintf(`{
  "metadata": {"name": "snug-pod", "namespace": "default", "uid": "snug-pod-uid", "attempt": 0},
  "log_directory": %q,
  "linux": {"security_context": {"namespace_options": {"network": 2}}}
}`, filepath.Join(dir, "pod-logs")))
	ctrJSON := writeFile(t, dir, "ctr.json", `{
  "metadata": {"name": "app"},
  "image": {"image": "localhost/snug-test:latest"},
  "command": ["/bin/sleep", "600"],
  "annotations": {"io.snugfs.policy": "big"},
  "log_path": "app.log",
  "linux": {}
}`)
	pod := run("runp", podJSON)
	t.Cleanup(func() {
		exec.Command(crictl, "--runtime-endpoint", "unix://"+s.socket(), "stopp", pod).Run()
		exec.Command(crictl, "--runtime-endpoint", "unix://"+s.socket(), "rmp", "-f", pod).Run()
	})
	cid := run("create", pod, ctrJSON, podJSON)
	run("start", cid)
	out := run("exec", cid, "/bin/sh", "-c", "echo ok; cat /data/keep; echo hello > /written; cat /written")
	if out != "ok\nkeep v2\nhello" {
		t.Errorf("container printed %q", out)
	}
	// The container's root and the pod's sandbox are snug images.
	var found []string
	for _, im := range s.status() {
		if im.Kind == "active" && strings.HasPrefix(im.Snapshot, "k8s.io/") {
			found = append(found, im.Snapshot)
			if im.Problem != "" || !im.Mounted {
				t.Errorf("%s: %s", im.Snapshot, im.Problem)
			}
		}
	}
	joined := strings.Join(found, " ")
	if !strings.Contains(joined, cid) || !strings.Contains(joined, pod) {
		t.Errorf("snug serves %v; want the container %s and the sandbox %s", found, cid, pod)
	}
	// The hooks ran: the container's image follows class big, and its
	// stop has it reclaimed.
	for _, im := range s.status() {
		if strings.HasSuffix(im.Snapshot, "/"+cid) {
			if im.State != "running" || im.Class != "big" || im.Container != cid || im.FreeBytes < 127<<20 {
				t.Errorf("container image after createRuntime: %+v, free %d MiB; want running, class big, 128 MiB free", im.Activity, im.FreeBytes>>20)
			}
		}
	}
	// Something for the reclaim to give back (trimming while running is
	// off): a stop finds an image packed already and skips its reclaim.
	run("exec", cid, "/bin/sh", "-c", "dd if=/dev/zero of=/gone bs=1M count=32 2>/dev/null; sync; rm /gone; sync")
	run("stop", cid)
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var im api.ImageStatus
		for _, x := range s.status() {
			if strings.HasSuffix(x.Snapshot, "/"+cid) {
				im = x
			}
		}
		if im.State == "stopped" && im.LastReclaim != nil {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("container image 5 s after crictl stop: %+v", im.Activity)
		}
	}
	run("rm", cid)

	// Quotas from Kubernetes: CRI passes no snapshot labels, so snug reads
	// the quota annotations when the container starts and sets them before
	// its process runs. A container's own (io.snugfs.quota), and a pod's
	// (containerd.io/snapshot/max-size, in bytes, passed to its containers
	// by pod_annotations): dd stops with ENOSPC at the quota.
	fill := func(cid string) int64 {
		t.Helper()
		out := run("exec", cid, "/bin/sh", "-c", "dd if=/dev/zero of=/fill bs=1M count=1024 2>&1; sync; du -sm /fill")
		if !strings.Contains(out, "No space left on device") {
			t.Fatalf("no ENOSPC in %s:\n%s", cid, out)
		}
		for _, im := range s.status() {
			if strings.HasSuffix(im.Snapshot, "/"+cid) {
				t.Logf("%s: quota %d MiB, stores %d MiB at ENOSPC", cid, im.QuotaBytes>>20, im.UsedBytes>>20)
				return im.QuotaBytes
			}
		}
		t.Fatalf("no image for %s", cid)
		return 0
	}
	ctr3JSON := writeFile(t, dir, "ctr3.json", `{
  "metadata": {"name": "quota"},
  "image": {"image": "localhost/snug-test:latest"},
  "command": ["/bin/sleep", "600"],
  "annotations": {"io.snugfs.quota": "96MiB", "io.snugfs.inodes": "5000"},
  "log_path": "quota.log",
  "linux": {}
}`)
	cid3 := run("create", pod, ctr3JSON, podJSON)
	run("start", cid3)
	// kubelet's view: CRI's container stats of the writable layer are
	// snug's Usage (the image's host footprint, its inodes in use).
	run("exec", cid3, "/bin/sh", "-c", "mkdir /many; i=0; while [ $i -lt 300 ]; do echo $i > /many/$i; i=$((i+1)); done; dd if=/dev/urandom of=/blob bs=1M count=20 2>/dev/null; sync")
	s.requireCRIStats(t, run, cid3)
	if q := fill(cid3); q != 96<<20 {
		t.Errorf("container annotated io.snugfs.quota=96MiB has quota %d", q)
	}
	// Its inode count, from io.snugfs.inodes (the image was made again
	// for it when containerd asked for the root's mounts, before the
	// container ran): a small-file writer meets ENOSPC at the limit.
	run("exec", cid3, "/bin/rm", "-f", "/fill")
	out = run("exec", cid3, "/bin/sh", "-c", "mkdir /inodes; i=0; while echo -n 2>/dev/null >/inodes/$i; do i=$((i+1)); done; echo $i")
	for _, im := range s.status() {
		if strings.HasSuffix(im.Snapshot, "/"+cid3) {
			made, _ := strconv.ParseInt(out, 10, 64)
			t.Logf("%s: %d inodes, %d files made before ENOSPC", cid3, im.InodesTotal, made)
			if im.InodesTotal < 5000 || im.InodesTotal > 5000+4096 || made > im.InodesTotal || made < im.InodesTotal-400 {
				t.Errorf("container annotated io.snugfs.inodes=5000: %d inodes, %d files made", im.InodesTotal, made)
			}
		}
	}
	run("rm", "-f", cid3)
	pod2JSON := writeFile(t, dir, "pod2.json", fmt.Sprintf(`{
  "metadata": {"name": "quota-pod", "namespace": "default", "uid": "quota-pod-uid", "attempt": 0},
  "annotations": {"containerd.io/snapshot/max-size": "134217728"},
  "log_directory": %q,
  "linux": {"security_context": {"namespace_options": {"network": 2}}}
}`, filepath.Join(dir, "pod2-logs")))
	pod2 := run("runp", pod2JSON)
	t.Cleanup(func() {
		exec.Command(crictl, "--runtime-endpoint", "unix://"+s.socket(), "stopp", pod2).Run()
		exec.Command(crictl, "--runtime-endpoint", "unix://"+s.socket(), "rmp", "-f", pod2).Run()
	})
	cid4 := run("create", pod2, ctr2JSONFor(t, dir, "in-quota-pod"), pod2JSON)
	run("start", cid4)
	if q := fill(cid4); q != 128<<20 {
		t.Errorf("container of a pod annotated max-size=134217728 has quota %d", q)
	}
	run("rm", "-f", cid4)

	// An ext4 error in a Kubernetes container's image: snug repairs it and
	// leaves the restart to the kubelet (a task started behind CRI's back
	// would run unseen by it); CRI sees the container exited.
	ctr2JSON := writeFile(t, dir, "ctr2.json", `{
  "metadata": {"name": "app2"},
  "image": {"image": "localhost/snug-test:latest"},
  "command": ["/bin/sleep", "600"],
  "log_path": "app2.log",
  "linux": {}
}`)
	cid2 := run("create", pod, ctr2JSON, podJSON)
	run("start", cid2)
	var id2 string
	for _, im := range s.status() {
		if strings.HasSuffix(im.Snapshot, "/"+cid2) {
			id2 = im.ID
		}
	}
	since := time.Now()
	s.triggerError(cid2)
	inc := s.waitIncidentClosed(id2, since, 60*time.Second)
	if inc.State != fsck.StateResolved || len(inc.Containers) != 1 {
		t.Fatalf("incident of a CRI container: %s (%s), containers %+v", inc.State, inc.Reason, inc.Containers)
	}
	if c := inc.Containers[0]; c.ManagedBy != "kubernetes" || !c.Stopped || c.Restarted || inc.Verify == nil || !inc.Verify.Clean() {
		t.Errorf("CRI container in the incident: %+v, verify %+v", c, inc.Verify)
	}
	// CRI learns of the exit from containerd's events, a moment later.
	state := ""
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if state = run("inspect", "-o", "go-template", "--template", "{{.status.state}}", cid2); state == "CONTAINER_EXITED" {
			break
		}
	}
	if state != "CONTAINER_EXITED" {
		t.Errorf("CRI says the repaired container is %q, want CONTAINER_EXITED", state)
	}
}

// requireCRIStats waits (up to 15 s: CRI refreshes its snapshot usage
// every stats_collect_period) until `crictl stats` of container cid shows
// the writable layer snug's Usage reports for it, and fails if it never
// does.
func (s *stack) requireCRIStats(t *testing.T, run func(...string) string, cid string) {
	t.Helper()
	key := "" // snug's key of the container's snapshot: containerd's namespace/n/cid
	for _, im := range s.status() {
		if strings.HasSuffix(im.Snapshot, "/"+cid) {
			key = im.Snapshot
		}
	}
	var got, want snapshots.Usage
	for end := time.Now().Add(15 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		var st struct {
			Stats []struct {
				WritableLayer struct {
					UsedBytes  struct{ Value string } `json:"usedBytes"`
					InodesUsed struct{ Value string } `json:"inodesUsed"`
				} `json:"writableLayer"`
			} `json:"stats"`
		}
		out := run("stats", "-o", "json", "--id", cid)
		if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Stats) != 1 {
			t.Fatalf("crictl stats -o json: %v\n%s", err, out)
		}
		got.Size, _ = strconv.ParseInt(st.Stats[0].WritableLayer.UsedBytes.Value, 10, 64)
		got.Inodes, _ = strconv.ParseInt(st.Stats[0].WritableLayer.InodesUsed.Value, 10, 64)
		u, err := s.snug.Snapshotter(t).Usage(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		want = u
		if got == want {
			t.Logf("crictl stats %s: writable layer %d bytes, %d inodes, as snug's Usage", cid, got.Size, got.Inodes)
			return
		}
		if time.Now().After(end) {
			t.Fatalf("crictl stats %s: writable layer %+v; snug's Usage %+v", cid, got, want)
		}
	}
}

// ctr2JSONFor writes a plain container config named name (sleep 600).
func ctr2JSONFor(t *testing.T, dir, name string) string {
	return writeFile(t, dir, name+".json", fmt.Sprintf(`{
  "metadata": {"name": %q},
  "image": {"image": "localhost/snug-test:latest"},
  "command": ["/bin/sleep", "600"],
  "log_path": "%s.log",
  "linux": {}
}`, name, name))
}

// restartContainerd stops containerd and starts it again on the same config.
func (s *stack) restartContainerd() {
	s.t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		s.t.Fatal("containerd ignored SIGTERM")
	}
	s.startContainerd()
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
