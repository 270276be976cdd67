package fsck

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	tasktypes "github.com/containerd/containerd/api/types/task"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"

	"github.com/snugfs/snug/internal/failpoint"
	"github.com/snugfs/snug/internal/urgent"
)

// EventMediaType is the media type of the descriptor each incident event
// carries. `ctr events` can print only event types compiled into it, so an
// incident step travels as containerd's own Descriptor type, its fields in
// annotations under io.snugfs.
const EventMediaType = "application/vnd.snugfs.incident.step.v1"

// TopicPrefix starts the topic of every incident event:
// /snug/incident/<step>.
const TopicPrefix = "/snug/incident/"

// criKindLabel marks the containers (and sandboxes) containerd's CRI
// plugin made: the kubelet owns their lifecycle.
const criKindLabel = "io.cri-containerd.kind"

// eventNamespace is the namespace of an incident event with no container.
const eventNamespace = "snug"

// Containerd is the pipeline's view of containerd, through its client.
type Containerd struct {
	address string
	index   SnapshotIndex

	mu     sync.Mutex // protects client and name
	client *containerd.Client
	// name is what containerd calls snug's snapshotter, learned from the
	// first container whose mounts were one of snug's snapshots.
	name string

	events eventQueue

	noCgroupOnce    sync.Once // see urgentCgroup
	noExecWatchOnce sync.Once // see watchHelpers
}

// SnapshotIndex relates containerd's view of a container to snug's
// snapshots (the snapshotter implements it).
type SnapshotIndex interface {
	// SnapshotOfMounts maps a container's root mounts to the snapshot
	// id of its writable image.
	SnapshotOfMounts(mounts []mount.Mount) string
	// LayersOfMounts maps them to the ids of its layers.
	LayersOfMounts(mounts []mount.Mount) []string
	// ContainerdKey is the containerd namespace and key of a snapshot,
	// ok false when containerd did not name it.
	ContainerdKey(ctx context.Context, id string) (namespace, key string, ok bool, err error)
}

var _ Containers = (*Containerd)(nil)

// NewContainerd talks to containerd at address, connecting when first
// needed (containerd may start after snug).
func NewContainerd(address string, index SnapshotIndex) *Containerd {
	return &Containerd{address: address, index: index}
}

// Client returns the client, connecting first if need be.
func (c *Containerd) Client() (*containerd.Client, error) { return c.get() }

// get returns the client, connecting first if need be. The dial runs
// outside c.mu: two first calls may both dial, and the second client is
// closed.
func (c *Containerd) get() (*containerd.Client, error) {
	c.mu.Lock()
	cl := c.client
	c.mu.Unlock()
	if cl != nil {
		return cl, nil
	}
	cl, err := containerd.New(c.address, containerd.WithTimeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("containerd at %s: %w", c.address, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client != nil {
		cl.Close()
		return c.client, nil
	}
	c.client = cl
	return cl, nil
}

// Close sends the events still queued (for up to eventDrain) and closes
// the client.
func (c *Containerd) Close() error {
	c.events.drain(eventDrain)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client == nil {
		return nil
	}
	err := c.client.Close()
	c.client = nil
	return err
}

// Using lists, in every namespace, the containers whose root is on the
// snapshot (or, for a layer, above it), with their tasks' status.
func (c *Containerd) Using(ctx context.Context, snapshot string, layer bool) ([]ContainerRef, error) {
	cl, err := c.get()
	if err != nil {
		return nil, err
	}
	var nss []string
	key := "" // the container's snapshot key, when containerd named the image
	if !layer {
		var ns string
		var ok bool
		if ns, key, ok, err = c.index.ContainerdKey(ctx, snapshot); err != nil {
			return nil, err
		} else if ok {
			nss = []string{ns}
		}
	}
	if nss == nil {
		if nss, err = cl.NamespaceService().List(ctx); err != nil {
			return nil, fmt.Errorf("list namespaces: %w", err)
		}
	}
	var out []ContainerRef
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		var cs []containers.Container
		if key != "" {
			// ctr, nerdctl and the CRI name a container's snapshot after
			// the container: one Get instead of the list of every
			// container (50 being created, under load).
			if ctr, err := cl.ContainerService().Get(nctx, key); err == nil && ctr.SnapshotKey == key {
				cs = []containers.Container{ctr}
			}
		}
		if cs == nil {
			if cs, err = cl.ContainerService().List(nctx); err != nil {
				return nil, fmt.Errorf("list containers of %s: %w", ns, err)
			}
		}
		for _, ctr := range cs {
			if ctr.SnapshotKey == "" || ctr.Snapshotter == "" || key != "" && ctr.SnapshotKey != key {
				// Under load, asking for every container's mounts
				// (through containerd and back to snug) cost seconds:
				// with the key, only the container on it is asked.
				continue
			}
			// The key alone does not say which snapshotter: its mounts
			// do, or the name containerd gave snug, once learned.
			if key == "" || ctr.Snapshotter != c.snapshotterName() {
				mounts, err := cl.SnapshotService(ctr.Snapshotter).Mounts(nctx, ctr.SnapshotKey)
				if err != nil || !c.uses(mounts, snapshot, layer) {
					continue // not a snapshot of ours, gone, or another one
				}
				c.learnName(ctr.Snapshotter)
			}
			ref := ContainerRef{Namespace: ns, ID: ctr.ID}
			if _, cri := ctr.Labels[criKindLabel]; cri {
				ref.ManagedBy = "kubernetes"
			}
			ref.Status, err = c.status(nctx, cl, ctr.ID)
			if err != nil {
				return nil, fmt.Errorf("container %s/%s: %w", ns, ctr.ID, err)
			}
			out = append(out, ref)
		}
	}
	return out, nil
}

func (c *Containerd) snapshotterName() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.name
}

func (c *Containerd) learnName(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.name = name
}

func (c *Containerd) uses(mounts []mount.Mount, snapshot string, layer bool) bool {
	if !layer {
		return c.index.SnapshotOfMounts(mounts) == snapshot
	}
	for _, id := range c.index.LayersOfMounts(mounts) {
		if id == snapshot {
			return true
		}
	}
	return false
}

// status is the task's status in lower case, "" when it has no task.
func (c *Containerd) status(ctx context.Context, cl *containerd.Client, id string) (string, error) {
	resp, err := cl.TaskService().Get(ctx, &tasksapi.GetRequest{ContainerID: id})
	if errdefs.IsNotFound(errgrpc.ToNative(err)) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return taskStatus(resp.Process.Status), nil
}

func taskStatus(s tasktypes.Status) string {
	switch s {
	case tasktypes.Status_RUNNING:
		return "running"
	case tasktypes.Status_PAUSED, tasktypes.Status_PAUSING:
		return "paused"
	case tasktypes.Status_STOPPED:
		return "stopped"
	case tasktypes.Status_CREATED:
		return "created"
	}
	return "unknown"
}

func (c *Containerd) nsClient(ctx context.Context, ref *ContainerRef) (context.Context, *containerd.Client, error) {
	cl, err := c.get()
	if err != nil {
		return ctx, nil, err
	}
	return namespaces.WithNamespace(ctx, ref.Namespace), cl, nil
}

// Pause freezes the task (containerd's pause: the cgroup freezer).
func (c *Containerd) Pause(ctx context.Context, ref *ContainerRef) error {
	ctx, cl, err := c.nsClient(ctx, ref)
	if err != nil {
		return err
	}
	if st, err := c.status(ctx, cl, ref.ID); err != nil || st != "running" {
		return err // paused already, or gone: nothing to freeze
	}
	_, err = cl.TaskService().Pause(ctx, &tasksapi.PauseTaskRequest{ContainerID: ref.ID})
	return errgrpc.ToNative(err)
}

// Resume thaws the task.
func (c *Containerd) Resume(ctx context.Context, ref *ContainerRef) error {
	ctx, cl, err := c.nsClient(ctx, ref)
	if err != nil {
		return err
	}
	if st, err := c.status(ctx, cl, ref.ID); err != nil || st != "paused" {
		return err
	}
	_, err = cl.TaskService().Resume(ctx, &tasksapi.ResumeTaskRequest{ContainerID: ref.ID})
	return errgrpc.ToNative(err)
}

// Stop kills the task (thawing it, so the kill lands) and waits for its
// exit. It records the task's stdio.
func (c *Containerd) Stop(ctx context.Context, ref *ContainerRef) error {
	ctx, cl, err := c.nsClient(ctx, ref)
	if err != nil {
		return err
	}
	ts := cl.TaskService()
	resp, err := ts.Get(ctx, &tasksapi.GetRequest{ContainerID: ref.ID})
	if errdefs.IsNotFound(errgrpc.ToNative(err)) {
		return nil // deleted already (by us before a restart, or its owner)
	}
	if err != nil {
		return err
	}
	p := resp.Process
	if ref.Stdout == "" && ref.Stderr == "" {
		ref.Stdout, ref.Stderr, ref.Terminal = p.Stdout, p.Stderr, p.Terminal
	}
	if p.Status == tasktypes.Status_STOPPED {
		return nil
	}
	if ref.ManagedBy == "" {
		c.raiseShim(ctx, ref, int(p.Pid))
	}
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	exited := make(chan error, 1)
	go func() {
		_, err := ts.Wait(wctx, &tasksapi.WaitRequest{ContainerID: ref.ID})
		exited <- errgrpc.ToNative(err)
	}()
	if _, err := ts.Kill(ctx, &tasksapi.KillRequest{ContainerID: ref.ID, Signal: uint32(syscall.SIGKILL), All: true}); err != nil && !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		return fmt.Errorf("kill: %w", errgrpc.ToNative(err))
	}
	killed := time.Since(start)
	if p.Status == tasktypes.Status_PAUSED || p.Status == tasktypes.Status_PAUSING {
		// A frozen task may not die until it is thawed (cgroup v1
		// on older kernels). Newer kernels deliver SIGKILL to frozen
		// tasks, and the thaw then finds it gone: the wait decides.
		if _, err := ts.Resume(ctx, &tasksapi.ResumeTaskRequest{ContainerID: ref.ID}); err != nil {
			log.G(ctx).WithError(err).WithField("container", ref.ID).Debug("thaw after kill")
		}
	}
	if err := <-exited; err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("wait for exit: %w", err)
	}
	log.G(ctx).WithFields(log.Fields{"container": ref.Namespace + "/" + ref.ID, "killed": killed, "exited": time.Since(start)}).Info("task stopped for a repair")
	return nil
}

// Delete deletes the container's stopped task; the shim unmounts its root.
// A task that is not stopped is not the one the stop stopped: the restart
// made it before a crash of snug (created, or running), or the container's
// owner did; it is left for Start to take over. (Deleting a created task
// made runc wait 10 s for its init to go.) Only a delete a restarted
// daemon started (afterStop false) looks.
func (c *Containerd) Delete(ctx context.Context, ref *ContainerRef, afterStop bool) (err error) {
	ctx, cl, err := c.nsClient(ctx, ref)
	if err != nil {
		return err
	}
	start := time.Now()
	if ref.ShimPID > 0 {
		defer func() {
			if err == nil {
				// A shim that serves other tasks outlives this one.
				c.lowerShim(ctx, ref, ref.ShimPID, ref.ShimCgroup)
			}
		}()
	}
	ts := cl.TaskService()
	// Only a task seen alive is kept: one being deleted (by a daemon
	// killed meanwhile) may look gone to Get while NewTask still finds it,
	// and the Delete below waits for it. Right after the stop (the
	// common case, under load each call counts), the task is the stopped one.
	if !afterStop {
		if resp, err := ts.Get(ctx, &tasksapi.GetRequest{ContainerID: ref.ID}); err == nil && resp.Process != nil {
			switch st := resp.Process.Status; st {
			case tasktypes.Status_CREATED, tasktypes.Status_RUNNING, tasktypes.Status_PAUSED, tasktypes.Status_PAUSING:
				log.G(ctx).WithFields(log.Fields{"container": ref.Namespace + "/" + ref.ID, "status": st}).Info("the container's task was made after the stop: kept for the restart")
				return nil
			}
		}
	}
	if ref.ShimCgroup != "" {
		defer c.watchHelpers(ctx, ref)()
	}
	if _, err := ts.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: ref.ID}); err != nil && !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		return fmt.Errorf("delete task: %w", errgrpc.ToNative(err))
	}
	log.G(ctx).WithFields(log.Fields{"container": ref.Namespace + "/" + ref.ID, "took": time.Since(start)}).Info("stopped task deleted for a repair")
	return nil
}

// Start creates the task again from the container's spec and starts it.
// Its stdio is what it was: a log URI (file://, binary://) is reused as
// is; FIFOs belonged to a client that is gone, so the output goes to a log
// file in logDir instead.
func (c *Containerd) Start(ctx context.Context, ref *ContainerRef, logDir string) error {
	ctx, cl, err := c.nsClient(ctx, ref)
	if err != nil {
		return err
	}
	ctr, err := cl.LoadContainer(ctx, ref.ID)
	if err != nil {
		return fmt.Errorf("load container: %w", err)
	}
	creator, err := c.ioFor(ref, logDir)
	if err != nil {
		return err
	}
	// The task was deleted by the stop: create it straight away (under
	// load each round trip to containerd counts), and look at the one in
	// the way only when there is one.
	start := time.Now()
	var opts []containerd.NewTaskOpts
	raised := ref.ShimCgroup != "" && c.urgentCgroup(ctx)
	if raised {
		if o, err := shimCgroupOpt(ctx, ctr); err != nil {
			log.G(ctx).WithError(err).WithField("container", ref.Namespace+"/"+ref.ID).Debug("new task's shim not in the repair's CPU cgroup")
			raised = false
		} else {
			opts = append(opts, o)
		}
	}
	if raised {
		defer c.watchHelpers(ctx, ref)()
	}
	task, err := ctr.NewTask(ctx, creator, opts...)
	running := false
	if errdefs.IsAlreadyExists(err) {
		task, running, err = existingTask(ctx, ctr, creator, opts)
	}
	if ref.ShimCgroup != "" && task != nil {
		// The new shim leaves urgent.Cgroup once its task runs, for
		// where its predecessor was (also the shim of a task a restart
		// cut short by a crash had started).
		defer func() {
			if shim, perr := urgent.ParentOf(int(task.Pid())); perr == nil && shim > 1 {
				c.lowerShim(ctx, ref, shim, ref.ShimCgroup)
			}
		}()
	}
	if err != nil {
		return fmt.Errorf("new task: %w", err)
	}
	if running {
		return nil
	}
	failpoint.Inject("fsck-restart-created") // the new task made, not started, its shim raised
	created := time.Since(start)
	if err := task.Start(ctx); err != nil {
		_, _ = task.Delete(ctx, containerd.WithProcessKill)
		return fmt.Errorf("start task: %w", err)
	}
	log.G(ctx).WithFields(log.Fields{"container": ref.Namespace + "/" + ref.ID, "created": created, "started": time.Since(start)}).Info("task started again after a repair")
	return nil
}

// existingTask is the task to start when the container has one already: a
// restart a crash interrupted after the create (the created task), a stop
// whose delete did not happen (deleted, and a new one created), or the
// task that runs (running true) when the container's owner, or the restart
// before a crash, was faster.
func existingTask(ctx context.Context, ctr containerd.Container, creator cio.Creator, opts []containerd.NewTaskOpts) (task containerd.Task, running bool, err error) {
	task, err = ctr.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		task, err = ctr.NewTask(ctx, creator, opts...) // gone meanwhile
		return task, false, err
	}
	if err != nil {
		return nil, false, err
	}
	st, err := task.Status(ctx)
	if err != nil {
		return nil, false, err
	}
	switch st.Status {
	case containerd.Created:
		return task, false, nil
	case containerd.Stopped:
		if _, err := task.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
			return nil, false, fmt.Errorf("delete the stopped task: %w", err)
		}
		task, err = ctr.NewTask(ctx, creator, opts...)
		return task, false, err
	}
	return task, true, nil
}

func (c *Containerd) ioFor(ref *ContainerRef, logDir string) (cio.Creator, error) {
	switch {
	case ref.Stdout == "" && ref.Stderr == "":
		return cio.NullIO, nil
	case isURI(ref.Stdout) && (ref.Stderr == "" || isURI(ref.Stderr)):
		cfg := cio.Config{Stdout: ref.Stdout, Stderr: ref.Stderr}
		return func(string) (cio.IO, error) { return fixedIO{cfg}, nil }, nil
	}
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return nil, err
	}
	ref.Log = filepath.Join(logDir, ref.Namespace+"-"+ref.ID+".log")
	return cio.LogFile(ref.Log), nil
}

func isURI(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "file" || u.Scheme == "binary")
}

// fixedIO hands containerd a task's stdio as it was; the shim opens it.
type fixedIO struct{ cfg cio.Config }

func (f fixedIO) Config() cio.Config { return f.cfg }
func (fixedIO) Cancel()              {}
func (fixedIO) Wait()                {}
func (fixedIO) Close() error         { return nil }

// Annotations returns the OCI annotations of the container in namespace
// whose root is containerd's snapshot key (a container's snapshot key is
// its id for ctr and CRI); nil when no container has that root, an empty
// map for a container with no annotations.
func (c *Containerd) Annotations(ctx context.Context, namespace, key string) (map[string]string, error) {
	cl, err := c.get()
	if err != nil {
		return nil, err
	}
	ctr, err := cl.ContainerService().Get(namespaces.WithNamespace(ctx, namespace), key)
	// The client's store answers native errors already (converting one
	// again makes it Unknown): a container not created yet is no error.
	if errdefs.IsNotFound(err) || errdefs.IsNotFound(errgrpc.ToNative(err)) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("container %s/%s: %w", namespace, key, err)
	}
	if ctr.SnapshotKey != key || ctr.Spec == nil {
		return nil, nil
	}
	var spec struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(ctr.Spec.GetValue(), &spec); err != nil {
		return nil, fmt.Errorf("container %s/%s: its OCI spec: %w", namespace, key, err)
	}
	if spec.Annotations == nil {
		spec.Annotations = map[string]string{} // a container, with none
	}
	return spec.Annotations, nil
}

// SnapshotOfContainer finds, in every namespace, the container with this
// id and returns snug's snapshot id of its root ("" when there is none,
// or it is not on snug).
func (c *Containerd) SnapshotOfContainer(ctx context.Context, id string) (string, error) {
	cl, err := c.get()
	if err != nil {
		return "", err
	}
	nss, err := cl.NamespaceService().List(ctx)
	if err != nil {
		return "", fmt.Errorf("list namespaces: %w", err)
	}
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		ctr, err := cl.ContainerService().Get(nctx, id)
		if err != nil || ctr.SnapshotKey == "" || ctr.Snapshotter == "" {
			continue
		}
		mounts, err := cl.SnapshotService(ctr.Snapshotter).Mounts(nctx, ctr.SnapshotKey)
		if err != nil {
			continue
		}
		if sid := c.index.SnapshotOfMounts(mounts); sid != "" {
			return sid, nil
		}
	}
	return "", nil
}
