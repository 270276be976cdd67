// Package daemon is `snug serve`: it opens the snapshotter (reconciling its
// state with the kernel first), serves it to containerd as a proxy
// snapshotter plugin over gRPC on config address, and serves the control API
// (package control) on config control_address. Both sockets are root-only.
//
// Stopping (ctx ends, on SIGTERM) drains the gRPC calls in flight, then
// closes the snapshotter; images stay mounted, so running containers are
// not affected and the next start serves them again.
//
//	err := daemon.Run(ctx, cfg)
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/log"
	"google.golang.org/grpc"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/control"
	"github.com/snugfs/snug/snapshotter"
)

// drainTimeout bounds how long a stop waits for gRPC calls in flight (a
// commit packing a large layer, say) before cutting them.
const drainTimeout = 30 * time.Second

// Run serves until ctx ends, then stops cleanly. It returns an error if it
// could not start, or if serving failed.
func Run(ctx context.Context, cfg config.Config) error {
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

	start := time.Now()
	sn, err := snapshotter.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer sn.Close()
	log.G(ctx).WithField("root", cfg.Root).WithField("took", time.Since(start)).Info("snapshots reconciled")

	rpc := grpc.NewServer(grpc.UnaryInterceptor(logCalls))
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	ctl := control.NewServer(sn)

	errc := make(chan error, 2)
	go func() { errc <- rpc.Serve(grpcL) }()
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
