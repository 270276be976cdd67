package daemon

import (
	"context"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	tasktypes "github.com/containerd/containerd/api/types/task"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"

	"github.com/snugfs/snug/images"
	"github.com/snugfs/snug/snapshotter"
)

// exitTopic is the containerd event of a task's process exiting.
const exitTopic = "/tasks/exit"

// followExits is the safety net under the poststop hook: it follows
// containerd's task exit events and tells the snapshotter that a container
// on one of its images stopped. A stop the hook reported already is not
// reclaimed twice. It reconnects until ctx ends, so containerd may start
// after snug or restart.
func followExits(ctx context.Context, address string, sn *snapshotter.Snapshotter) {
	backoff := time.Second
	warned := false
	for ctx.Err() == nil {
		err := followOnce(ctx, address, sn, func() { backoff, warned = time.Second, false })
		if ctx.Err() != nil {
			return
		}
		entry := log.G(ctx).WithError(err).WithField("containerd", address)
		if !warned {
			entry.Warn("not following containerd's task exits; retrying")
			warned = true
		} else {
			entry.Debug("still not following containerd's task exits")
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func followOnce(ctx context.Context, address string, sn *snapshotter.Snapshotter, connected func()) error {
	client, err := containerd.New(address, containerd.WithTimeout(5*time.Second))
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	envelopes, errs := client.EventService().Subscribe(ctx, `topic=="`+exitTopic+`"`)
	log.G(ctx).WithField("containerd", address).Info("following containerd's task exits")
	connected()
	for {
		select {
		case err := <-errs:
			return err
		case e := <-envelopes:
			if e == nil || e.Event == nil {
				continue
			}
			v, err := typeurl.UnmarshalAny(e.Event)
			if err != nil {
				continue
			}
			exit, ok := v.(*apievents.TaskExit)
			if !ok || exit.ID != exit.ContainerID {
				continue // an exec'd process, not the container's own
			}
			go stopped(namespaces.WithNamespace(ctx, e.Namespace), client, sn, exit.ContainerID)
		}
	}
}

// stopped finds the snapshot of a container that exited and, if it is one
// of snug's, reports the stop.
func stopped(ctx context.Context, client *containerd.Client, sn *snapshotter.Snapshotter, id string) {
	c, err := client.ContainerService().Get(ctx, id)
	if err != nil || c.SnapshotKey == "" {
		return // gone already (run --rm), or no rootfs snapshot
	}
	// Started again since (the error monitor restarts a repaired
	// container): this exit is old news.
	if t, err := client.TaskService().Get(ctx, &tasksapi.GetRequest{ContainerID: id}); err == nil && t.Process.Status != tasktypes.Status_STOPPED {
		return
	}
	mounts, err := client.SnapshotService(c.Snapshotter).Mounts(ctx, c.SnapshotKey)
	if err != nil {
		return
	}
	sid := sn.SnapshotOfMounts(mounts)
	if sid == "" {
		return
	}
	if _, err := sn.Images().ContainerStopped(ctx, images.Container{ID: id, SnapshotID: sid}); err != nil {
		log.G(ctx).WithError(err).WithField("container", id).Warn("task exit")
	}
}
