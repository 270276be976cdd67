package fsck

import (
	"context"
	"fmt"

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
