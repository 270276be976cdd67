// Package daemon is `snug serve`: it opens the snapshotter (reconciling its
// state with the kernel first), serves it to containerd as a proxy
// snapshotter plugin over gRPC on config address, and serves the control API
// (package control) on config control_address. Both sockets are root-only.
//
// It also follows containerd's task exit events (config containerd_address),
// serves Prometheus metrics (config metrics_address), and reloads its policy
// on SIGHUP.
//
// Stopping (ctx ends, on SIGTERM) drains the gRPC calls in flight, then
// closes the snapshotter: the images containers use stay mounted, so running
// containers are not affected and the next start serves them again; the
// others are unmounted and their loop devices detached.
//
//	err := daemon.Run(ctx, cfg, "/etc/snug/config.toml", reload)
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"google.golang.org/grpc"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/control"
	"github.com/snugfs/snug/differ"
	"github.com/snugfs/snug/fsck"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/snapshotter"
)

// drainTimeout bounds how long a stop waits for gRPC calls in flight (a
// commit packing a large layer, say) before cutting them.
const drainTimeout = 30 * time.Second

// Run serves until ctx ends, then stops cleanly. It returns an error if it
// could not start, or if serving failed. cfg was read from the policy file
// at file (the control API tells it to the runc wrapper). On SIGHUP it
// calls load and puts the policy it returns in force; a policy load
// refuses is logged and the one in force stays.
func Run(ctx context.Context, cfg config.Config, file string, load func() (config.Config, error)) error {
	// Sockets first: a second daemon on the same sockets must fail at once,
	// before it touches the state a live one is using.
	grpcL, err := listenUnix(cfg.Address)
	if err != nil {
		return err
	}
	defer removeSocket(ctx, grpcL, cfg.Address)
	ctlL, err := listenUnix(cfg.ControlAddress)
	if err != nil {
		grpcL.Close()
		return err
	}
	defer removeSocket(ctx, ctlL, cfg.ControlAddress)
	var metricsL net.Listener
	if cfg.MetricsAddress != "" {
		if metricsL, err = net.Listen("tcp", cfg.MetricsAddress); err != nil {
			return fmt.Errorf("metrics_address: %w", err)
		}
		defer metricsL.Close()
	}

	start := time.Now()
	imagefs.UseTools(cfg.E2fsprogsDir)
	sn, err := snapshotter.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer sn.Close()
	log.G(ctx).WithField("root", cfg.Root).WithField("took", time.Since(start)).Info("snapshots reconciled")

	// The error monitor: every image mounted is watched from now on, and
	// incidents a previous daemon left open resume.
	var ctrd *fsck.Containerd
	var ctrs fsck.Containers
	if cfg.ContainerdAddress != "" {
		ctrd = fsck.NewContainerd(cfg.ContainerdAddress, sn)
		defer ctrd.Close()
		ctrs = ctrd
		sn.SetAnnotationSource(ctrd.Annotations)
	}
	doctor, err := fsck.NewDoctor(filepath.Join(cfg.Root, "incidents"), cfg.Fsck, sn, ctrs)
	if err != nil {
		return err
	}
	sn.Images().Observe(ctx, doctor)
	log.G(ctx).WithField("monitor", doctor.MonitorMode()).Info("watching images for ext4 errors")

	rpc := grpc.NewServer(grpc.UnaryInterceptor(logCalls))
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	layers := differ.New(sn, contentStore(ctrd))
	layers.Register(rpc)
	ctl := control.NewServer(service{hookCalls: hookCalls{sn: sn.Images(), policy: file}, sn: sn, images: sn.Images(), doctor: doctor, ctrd: ctrd})

	bgCtx, stopBg := context.WithCancel(ctx)
	defer stopBg()
	doctorDone := make(chan struct{})
	go func() {
		defer close(doctorDone)
		doctor.Run(bgCtx)
	}()
	// Before the snapshotter closes: a step in progress finishes first.
	defer func() { stopBg(); <-doctorDone }()
	errc := make(chan error, 3)
	go func() { errc <- rpc.Serve(grpcL) }()
	if metricsL != nil {
		go func() {
			if err := serveMetrics(bgCtx, metricsL, served{sn.Images(), sn, layers}, doctor); err != nil {
				errc <- fmt.Errorf("metrics: %w", err)
			}
		}()
	}
	if cfg.ContainerdAddress != "" {
		go followExits(bgCtx, cfg.ContainerdAddress, sn)
	}
	go reloadOnHangup(bgCtx, cfg, load, sn, doctor)
	go func() {
		if err := ctl.Serve(ctlL); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	log.G(ctx).WithField("address", cfg.Address).WithField("control", cfg.ControlAddress).Info("snug serving")

	select {
	case <-ctx.Done():
		log.G(ctx).Info("stopping")
	case err = <-errc:
		log.G(ctx).WithError(err).Error("serving failed")
	}
	stopped := make(chan struct{})
	go func() { rpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(drainTimeout):
		log.G(ctx).Warn("calls still running after drain timeout; cutting them")
		rpc.Stop()
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	ctl.Shutdown(sctx)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// reloadOnHangup puts a new policy in force on each SIGHUP.
func reloadOnHangup(ctx context.Context, cfg config.Config, load func() (config.Config, error), sn *snapshotter.Snapshotter, doctor *fsck.Doctor) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		next, err := load()
		if err == nil {
			err = sn.SetConfig(ctx, next)
		}
		if err != nil {
			log.G(ctx).WithError(err).Error("policy reload refused; the policy in force stays")
			continue
		}
		doctor.SetPolicy(next.Fsck)
		imagefs.UseTools(next.E2fsprogsDir)
		for _, k := range restartOnly(cfg, next) {
			log.G(ctx).WithField("key", k).Warn("policy reloaded, but this key changes only at a restart")
		}
		log.G(ctx).Info("policy reloaded")
	}
}

// restartOnly lists the keys that differ between old and next and that a
// reload cannot change: the sockets and addresses the daemon opened.
func restartOnly(old, next config.Config) []string {
	var keys []string
	for _, k := range []struct {
		key  string
		a, b string
	}{
		{"address", old.Address, next.Address},
		{"control_address", old.ControlAddress, next.ControlAddress},
		{"metrics_address", old.MetricsAddress, next.MetricsAddress},
		{"containerd_address", old.ContainerdAddress, next.ContainerdAddress},
		{"fsck.monitor", old.Fsck.Monitor, next.Fsck.Monitor},
	} {
		if k.a != k.b {
			keys = append(keys, k.key)
		}
	}
	return keys
}

func removeSocket(ctx context.Context, l net.Listener, path string) {
	l.Close()
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.G(ctx).WithError(err).WithField("path", path).Warn("cannot remove socket")
	}
}

// logCalls logs every snapshotter call with its duration at debug level,
// and failed calls at warning level.
func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	entry := log.G(ctx).WithField("method", info.FullMethod).WithField("took", time.Since(start))
	if err != nil {
		entry.WithError(err).Warn("call failed")
	} else {
		entry.Debug("call")
	}
	return resp, err
}

// contentStore is containerd's content store, for the differ.
func contentStore(ctrd *fsck.Containerd) func() (content.Store, error) {
	return func() (content.Store, error) {
		if ctrd == nil {
			return nil, fmt.Errorf("snug's differ needs containerd_address in the configuration: %w", errdefs.ErrFailedPrecondition)
		}
		cl, err := ctrd.Client()
		if err != nil {
			return nil, err
		}
		return cl.ContentStore(), nil
	}
}
