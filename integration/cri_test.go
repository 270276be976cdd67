package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snugfs/snug/fsck"
	"github.com/snugfs/snug/internal/roottest"
	"github.com/snugfs/snug/snapshotter"
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
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "localhost/snug-pause:latest"
[plugins."io.containerd.cri.v1.runtime"]
  # Lowering oom_score_adj needs CAP_SYS_RESOURCE, which this host lacks.
  restrict_oom_score_adj = true
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  container_annotations = ["io.snugfs.*"]
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
	run("stop", cid)
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var im snapshotter.ImageStatus
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
