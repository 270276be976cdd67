package integration

import (
	"context"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/snugfs/snug/fsck"
)

// TestRestartFindsTheTaskInTheWay: the error monitor's restart creates
// the container's task straight away, and handles a task already there as
// a restart a crash interrupted, or an owner faster than snug, leaves it: a
// running one is left alone, a stopped one is replaced, a created one is
// started.
func TestRestartFindsTheTaskInTheWay(t *testing.T) {
	s := startStack(t, containerPolicy)
	s.importImage()
	s.ctr("run", "-d", "--snapshotter", "snug", testImageRef, "inway", "/bin/sleep", "600")
	ctx := context.Background()
	c := fsck.NewContainerd(s.socket(), nil)
	defer c.Close()
	ref := &fsck.ContainerRef{Namespace: "default", ID: "inway"}
	logs := t.TempDir()

	pid := s.taskPID("inway")
	if err := c.Start(ctx, ref, logs); err != nil {
		t.Fatalf("running task: %v", err)
	}
	if got := s.taskPID("inway"); got != pid {
		t.Fatalf("a running task was replaced: pid %s, then %s", pid, got)
	}

	s.ctr("tasks", "kill", "-s", "KILL", "inway")
	waitStopped(t, s, "inway")
	if err := c.Start(ctx, ref, logs); err != nil {
		t.Fatalf("stopped task: %v", err)
	}
	if got := s.taskPID("inway"); got == "" || got == pid {
		t.Fatalf("a stopped task was not replaced by a running one: pid %s, then %q", pid, got)
	}

	s.ctr("tasks", "kill", "-s", "KILL", "inway")
	waitStopped(t, s, "inway")
	s.ctr("tasks", "delete", "inway")
	cl, err := containerd.New(s.socket())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	nctx := namespaces.WithNamespace(ctx, "default")
	ctr, err := cl.LoadContainer(nctx, "inway")
	if err != nil {
		t.Fatal(err)
	}
	task, err := ctr.NewTask(nctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := task.Status(nctx); err != nil || st.Status != containerd.Created {
		t.Fatalf("task status %v, %v; want created", st.Status, err)
	}
	if err := c.Start(ctx, ref, logs); err != nil {
		t.Fatalf("created task: %v", err)
	}
	if s.taskPID("inway") == "" {
		t.Fatal("a created task was not started")
	}
	s.ctr("tasks", "kill", "-s", "KILL", "inway")
}
