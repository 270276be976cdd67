package fsck

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"

	"github.com/snugfs/snug/internal/urgent"
)

// A repaired container's task calls run with its shims in urgent.Cgroup:
// the shim that stops the broken task (the kill, runc delete, the unmount
// of its root) from the stop on, and the shim that starts the new one
// (runc create and start) until the task runs; then the new shim goes
// back to the CPU cgroup its predecessor was in. Under a burst of
// containers starting, each shim and runc otherwise gets the share of the
// CPUs every other process starting a container gets. Only for containers
// snug restarts itself, with runc's shim: a CRI container's shim serves
// its pod's other containers, and its restart is the kubelet's.
//
// Two of those steps are programs containerd runs itself, at its own
// priority: the task delete waits for `containerd-shim-runc-v2 ... -id ID
// delete` (containerd's clean-up once the shim's connection closes, which
// runs runc again), and the new task for `containerd-shim-runc-v2 ... -id
// ID start`, which starts the shim. While snug deletes and creates the
// task, an urgent.ExecWatch moves those into urgent.Cgroup as they exec.

// raiseShim moves the shim of the task whose init process is pid into
// urgent.Cgroup, for the kill and the delete, and records it and the
// cgroup it was in (ShimPID, ShimCgroup) in ref, which the incident keeps.
func (c *Containerd) raiseShim(ctx context.Context, ref *ContainerRef, pid int) {
	if !c.urgentCgroup(ctx) || pid <= 0 {
		return
	}
	shim, err := urgent.ParentOf(pid)
	if err == nil && shim <= 1 {
		err = fmt.Errorf("task process %d has no shim for a parent (%d)", pid, shim)
	}
	var from string
	if err == nil {
		from, err = urgent.Raise(shim)
	}
	if err != nil {
		log.G(ctx).WithError(err).WithField("container", ref.Namespace+"/"+ref.ID).Warn("the stopped task's shim keeps its CPU cgroup")
		return
	}
	if from == urgent.Cgroup {
		return // raised by a try before: ref has where it came from
	}
	ref.ShimPID, ref.ShimCgroup = shim, from
}

// lowerShim moves a shim out of urgent.Cgroup into cgroup to, if it is
// still there.
func (c *Containerd) lowerShim(ctx context.Context, ref *ContainerRef, pid int, to string) {
	if !urgent.In(pid) {
		return
	}
	if err := urgent.Lower(pid, to); err != nil {
		log.G(ctx).WithError(err).WithField("container", ref.Namespace+"/"+ref.ID).Warn("shim left in the repair's CPU cgroup")
	}
}

// urgentCgroup reports whether the host has urgent's CPU cgroup, logging
// once why not.
func (c *Containerd) urgentCgroup(ctx context.Context) bool {
	err := urgent.Setup()
	if err != nil {
		c.noCgroupOnce.Do(func() {
			log.G(ctx).WithError(err).Warn("no CPU cgroup for repairs: a repaired container's shims share the CPUs with every other process")
		})
	}
	return err == nil
}

// shimCgroupOpt starts a container's new task with its shim in
// urgent.Cgroup (runc's ShimCgroup option); for runc's shim only, whose
// options these are.
func shimCgroupOpt(ctx context.Context, ctr containerd.Container) (containerd.NewTaskOpts, error) {
	info, err := ctr.Info(ctx, containerd.WithoutRefreshedMetadata)
	if err != nil {
		return nil, err
	}
	if info.Runtime.Name != plugins.RuntimeRuncV2 {
		return nil, fmt.Errorf("runtime %s is not runc's shim", info.Runtime.Name)
	}
	if o := info.Runtime.Options; o != nil && o.GetValue() != nil && !typeurl.Is(o, &runcoptions.Options{}) {
		return nil, fmt.Errorf("runtime options %s are not runc's", o.GetTypeUrl())
	}
	return containerd.WithShimCgroup(urgent.Cgroup), nil
}

// watchHelpers starts moving into urgent.Cgroup the programs containerd
// runs for the container's task (the shim's start and delete helpers);
// its stop function ends that. Without the watch (no process events on
// this host), they run at containerd's priority.
func (c *Containerd) watchHelpers(ctx context.Context, ref *ContainerRef) func() {
	w, err := urgent.WatchExecs(shimHelperOf(ref.Namespace, ref.ID))
	if err != nil {
		c.noExecWatchOnce.Do(func() {
			log.G(ctx).WithError(err).Warn("no process events: the programs containerd runs for a repaired container's task run at containerd's priority")
		})
		return func() {}
	}
	return func() {
		if raised := w.Stop(); len(raised) > 0 {
			log.G(ctx).WithFields(log.Fields{"container": ref.Namespace + "/" + ref.ID, "pids": raised}).Debug("containerd's shim helpers ran in the repair's CPU cgroup")
		}
	}
}

// shimHelperOf matches the command lines containerd runs a shim with for
// container id of namespace ns: "containerd-shim-* -namespace NS ... -id
// ID ... ACTION".
func shimHelperOf(ns, id string) func(argv []string) bool {
	return func(argv []string) bool {
		if len(argv) == 0 || !strings.HasPrefix(filepath.Base(argv[0]), "containerd-shim") {
			return false
		}
		return flagIs(argv, "-namespace", ns) && flagIs(argv, "-id", id)
	}
}

// flagIs reports whether argv has flag followed by value.
func flagIs(argv []string, flag, value string) bool {
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			return argv[i+1] == value
		}
	}
	return false
}
