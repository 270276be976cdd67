// Package control is snug's control API: HTTP with JSON bodies on a
// root-only Unix socket (config control_address), served by `snug serve`,
// and Client, the one typed client through which the CLI and the OCI hooks
// reach the daemon.
//
// The socket is created 0600 in a 0700 directory, and every connection's
// peer credentials are checked as well: only root (uid 0) is answered.
//
//	c := control.NewClient("/run/snug/control.sock")
//	images, err := c.Status(ctx)
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/control/wire"
	"github.com/snugfs/snug/fsck"
	"github.com/snugfs/snug/hooks"
	"github.com/snugfs/snug/snapshotter"
)

// Paths of the API (package wire has the protocol).
const (
	PathStatus         = wire.PathStatus
	PathContainerStart = wire.PathContainerStart
	PathContainerStop  = wire.PathContainerStop
	PathBundleCreate   = wire.PathBundleCreate
	PathPoststop       = wire.PathPoststop
	PathReclaim        = wire.PathReclaim
	PathIncidents      = wire.PathIncidents
	PathCheck          = wire.PathCheck
	PathResize         = wire.PathResize
)

// Source is what the control API reports on and acts on: the snapshotter.
type Source interface {
	Status(ctx context.Context) ([]snapshotter.ImageStatus, error)
	ContainerStarting(ctx context.Context, c snapshotter.Container) (snapshotter.ContainerImage, error)
	ContainerStopped(ctx context.Context, c snapshotter.Container) (snapshotter.ContainerImage, error)
	Reclaim(ctx context.Context, key string) ([]snapshotter.ReclaimOutcome, error)
	// Incidents lists the error monitor's incidents, oldest first.
	Incidents(ctx context.Context) ([]fsck.Incident, error)
	// Check runs the online check of a container's or snapshot's image.
	Check(ctx context.Context, target string) (fsck.CheckResult, error)
	// Resize changes the quota of a container's or snapshot's image.
	Resize(ctx context.Context, target string, quota int64) (snapshotter.QuotaOutcome, error)
}

// ResizeRequest is the body of a resize call: a container id, or a
// snapshot by its key in snug's store or its id, and its new quota.
type ResizeRequest struct {
	Target string `json:"target"`
	Quota  int64  `json:"quota_bytes"`
}

// CheckRequest is the body of a check call: a container id, or a snapshot
// by its key in snug's store or its id.
type CheckRequest struct {
	Target string `json:"target"`
}

// Container is the body of the container start and stop calls.
type Container = wire.Container

// ReclaimRequest is the body of a reclaim call: one snapshot by its key in
// snug's store, or every active snapshot when Snapshot is empty.
type ReclaimRequest struct {
	Snapshot string `json:"snapshot,omitempty"`
}

// ErrDaemonDown is returned by the Client when nothing answers on the socket.
var ErrDaemonDown = wire.ErrDaemonDown

// peerKey carries a connection's peer credentials into its requests.
type peerKey struct{}

// NewServer returns the HTTP server of the control API for src. policy is
// the policy file the daemon runs ("" if unknown): the bundle create call
// of a wrapper that reads another one is refused.
func NewServer(src Source, policy string) *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathStatus, func(w http.ResponseWriter, r *http.Request) {
		images, err := src.Status(r.Context())
		if err != nil {
			writeError(w, statusOf(err), err)
			return
		}
		if images == nil {
			images = []snapshotter.ImageStatus{}
		}
		writeJSON(w, images)
	})
	container := func(call func(context.Context, snapshotter.Container) (snapshotter.ContainerImage, error)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var c Container
			if !readJSON(w, r, &c) {
				return
			}
			img, err := call(r.Context(), fromWire(c))
			if err != nil {
				writeError(w, statusOf(err), err)
				return
			}
			writeJSON(w, toWire(img))
		}
	}
	mux.HandleFunc("POST "+PathContainerStart, container(src.ContainerStarting))
	mux.HandleFunc("POST "+PathContainerStop, container(src.ContainerStopped))
	mux.HandleFunc("POST "+PathBundleCreate, func(w http.ResponseWriter, r *http.Request) {
		var req wire.Bundle
		if !readJSON(w, r, &req) {
			return
		}
		if req.Policy != "" && policy != "" && !samePath(req.Policy, policy) {
			writeError(w, http.StatusConflict, fmt.Errorf("this daemon runs policy %s, not %s", policy, req.Policy))
			return
		}
		img, err := hooks.PrepareBundle(r.Context(), req, func(ctx context.Context, c wire.Container) (wire.ContainerImage, error) {
			img, err := src.ContainerStarting(ctx, fromWire(c))
			return toWire(img), err
		})
		if err != nil {
			writeError(w, bundleStatus(err), err)
			return
		}
		writeJSON(w, img)
	})
	mux.HandleFunc("POST "+PathPoststop, func(w http.ResponseWriter, r *http.Request) {
		st, err := hooks.ReadState(r.Body)
		if err != nil {
			writeError(w, statusOf(err), err) // hooks.ErrBadState: 400
			return
		}
		img, err := src.ContainerStopped(r.Context(), fromWire(hooks.StateContainer(st)))
		if err != nil {
			writeError(w, statusOf(err), err)
			return
		}
		writeJSON(w, toWire(img))
	})
	mux.HandleFunc("POST "+PathReclaim, func(w http.ResponseWriter, r *http.Request) {
		var req ReclaimRequest
		if !readJSON(w, r, &req) {
			return
		}
		out, err := src.Reclaim(r.Context(), req.Snapshot)
		if err != nil {
			writeError(w, statusOf(err), err)
			return
		}
		if out == nil {
			out = []snapshotter.ReclaimOutcome{}
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("GET "+PathIncidents, func(w http.ResponseWriter, r *http.Request) {
		out, err := src.Incidents(r.Context())
		if err != nil {
			writeError(w, statusOf(err), err)
			return
		}
		if out == nil {
			out = []fsck.Incident{}
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("POST "+PathCheck, func(w http.ResponseWriter, r *http.Request) {
		var req CheckRequest
		if !readJSON(w, r, &req) {
			return
		}
		out, err := src.Check(r.Context(), req.Target)
		if err != nil {
			writeError(w, statusOf(err), err)
			return
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("POST "+PathResize, func(w http.ResponseWriter, r *http.Request) {
		var req ResizeRequest
		if !readJSON(w, r, &req) {
			return
		}
		out, err := src.Resize(r.Context(), req.Target, req.Quota)
		if err != nil {
			writeError(w, statusOf(err), err)
			return
		}
		writeJSON(w, out)
	})
	return &http.Server{
		Handler:           rootOnly(mux),
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, peerCred(c))
		},
	}
}

// fromWire is the snapshotter's view of a container a hook reports.
func fromWire(c wire.Container) snapshotter.Container {
	return snapshotter.Container{ID: c.ID, RootFS: c.RootFS, Annotations: c.Annotations}
}

// toWire is the answer to a hook's call.
func toWire(img snapshotter.ContainerImage) wire.ContainerImage {
	return wire.ContainerImage{ID: img.ID, Class: img.Class, FreeBytes: img.FreeBytes}
}

// samePath tells whether a and b name the same file: the same inode, or
// the same clean path when either cannot be read.
func samePath(a, b string) bool {
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	if errA == nil && errB == nil {
		return os.SameFile(fa, fb)
	}
	return filepath.Clean(a) == filepath.Clean(b)
}

// rootOnly answers only connections whose peer is root.
func rootOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cred, _ := r.Context().Value(peerKey{}).(*unix.Ucred)
		if cred == nil || cred.Uid != 0 {
			writeError(w, http.StatusForbidden, errors.New("the snug control API is for root only"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// peerCred reads SO_PEERCRED of a Unix connection (nil for anything else).
func peerCred(c net.Conn) *unix.Ucred {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil
	}
	var cred *unix.Ucred
	raw.Control(func(fd uintptr) {
		cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	return cred
}

// statusOf is the HTTP status of an error by its errdefs class (every
// sentinel of snug's has one: internal/errclass), the one mapping every
// route uses. A file that does not exist (a bundle this daemon cannot see)
// is not found.
func statusOf(err error) int {
	switch {
	case errdefs.IsInvalidArgument(err): // first: a bad bundle may also name a missing file
		return http.StatusBadRequest
	case errdefs.IsNotFound(err), errors.Is(err, fs.ErrNotExist):
		return http.StatusNotFound
	case errdefs.IsFailedPrecondition(err), errdefs.IsConflict(err), errdefs.IsAlreadyExists(err):
		return http.StatusConflict
	case errdefs.IsUnavailable(err):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// bundleStatus is the HTTP status of a failed bundle create. It is not
// statusOf's: snug-runc hands a call answered 404 or 409 over to the Go
// wrapper (a bundle the daemon cannot see, a daemon running another
// policy), so those two codes mean only that here.
func bundleStatus(err error) int {
	switch {
	case errdefs.IsInvalidArgument(err):
		return http.StatusBadRequest
	case errors.Is(err, fs.ErrNotExist):
		return http.StatusNotFound
	}
	return http.StatusInternalServerError
}

func writeError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(wire.ErrorBody{Error: err.Error()})
}

// readJSON decodes a request body of at most 1 MiB into v, answering 400
// when it cannot.
func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("bad request body: %w", err))
		return false
	}
	// One JSON value and nothing after it (found by FuzzControlAPI).
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, errors.New("bad request body: data after the JSON value"))
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// Client talks to the daemon's control socket: the hooks' calls from
// wire.Client, and the CLI's.
type Client struct {
	*wire.Client
}

// NewClient returns a client for the control socket at address.
func NewClient(address string) *Client {
	return &Client{wire.NewClient(address)}
}

// Status returns every image the daemon serves.
func (c *Client) Status(ctx context.Context) ([]snapshotter.ImageStatus, error) {
	var out []snapshotter.ImageStatus
	return out, c.Call(ctx, http.MethodGet, PathStatus, nil, &out)
}

// Reclaim repacks one snapshot's image now, or every one for "".
func (c *Client) Reclaim(ctx context.Context, snapshot string) ([]snapshotter.ReclaimOutcome, error) {
	var out []snapshotter.ReclaimOutcome
	return out, c.Call(ctx, http.MethodPost, PathReclaim, ReclaimRequest{Snapshot: snapshot}, &out)
}

// Incidents lists the error monitor's incidents, oldest first.
func (c *Client) Incidents(ctx context.Context) ([]fsck.Incident, error) {
	var out []fsck.Incident
	return out, c.Call(ctx, http.MethodGet, PathIncidents, nil, &out)
}

// Resize changes the quota of a container's or snapshot's image now.
func (c *Client) Resize(ctx context.Context, target string, quota int64) (snapshotter.QuotaOutcome, error) {
	var out snapshotter.QuotaOutcome
	return out, c.Call(ctx, http.MethodPost, PathResize, ResizeRequest{Target: target, Quota: quota}, &out)
}

// Check runs the online check of a container's or snapshot's image now.
func (c *Client) Check(ctx context.Context, target string) (fsck.CheckResult, error) {
	var out fsck.CheckResult
	return out, c.Call(ctx, http.MethodPost, PathCheck, CheckRequest{Target: target}, &out)
}
