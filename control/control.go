// Package control is the transport of snug's control API: HTTP with JSON
// bodies on a root-only Unix socket (config control_address), served by
// `snug serve` for a Service the daemon implements, and Client, the one
// typed client through which the CLI reaches the daemon (the OCI hooks use
// package wire's). It knows routes, bodies and statuses, nothing of what
// the calls do: the bodies are package wire's and package api's.
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
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/control/wire"
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

// Service is what the routes call: the daemon implements it. Its errors
// carry their errdefs class, which statusOf turns into the HTTP status.
type Service interface {
	Status(ctx context.Context) ([]api.ImageStatus, error)
	// ContainerStarting and ContainerStopped are the hooks' calls.
	ContainerStarting(ctx context.Context, c wire.Container) (wire.ContainerImage, error)
	ContainerStopped(ctx context.Context, c wire.Container) (wire.ContainerImage, error)
	// BundleCreate is snug-runc's call on runc create and run. snug-runc
	// hands a call answered 404 or 409 over to the Go wrapper, so only a
	// bundle the daemon cannot see (fs.ErrNotExist) and a daemon running
	// another policy (a conflict) may fail with those classes.
	BundleCreate(ctx context.Context, b wire.Bundle) (wire.ContainerImage, error)
	// Poststop is snug-runc's poststop hook: the OCI state as it came.
	Poststop(ctx context.Context, state io.Reader) (wire.ContainerImage, error)
	Reclaim(ctx context.Context, snapshot string) ([]api.ReclaimOutcome, error)
	// Incidents lists the error monitor's incidents, oldest first.
	Incidents(ctx context.Context) ([]api.Incident, error)
	// Check runs the online check of a container's or snapshot's image.
	Check(ctx context.Context, target string) (api.CheckResult, error)
	// Resize changes the quota of a container's or snapshot's image.
	Resize(ctx context.Context, target string, quota int64) (api.QuotaOutcome, error)
}

// Container is the body of the container start and stop calls.
type Container = wire.Container

// ErrDaemonDown is returned by the Client when nothing answers on the socket.
var ErrDaemonDown = wire.ErrDaemonDown

// peerKey carries a connection's peer credentials into its requests.
type peerKey struct{}

// NewServer returns the HTTP server of the control API for svc: one
// handler per route, each decoding its body, calling svc and encoding the
// answer.
func NewServer(svc Service) *http.Server {
	h := handlers{svc}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathStatus, h.status)
	mux.HandleFunc("POST "+PathContainerStart, passing(svc.ContainerStarting))
	mux.HandleFunc("POST "+PathContainerStop, passing(svc.ContainerStopped))
	mux.HandleFunc("POST "+PathBundleCreate, passing(svc.BundleCreate))
	mux.HandleFunc("POST "+PathPoststop, h.poststop)
	mux.HandleFunc("POST "+PathReclaim, h.reclaim)
	mux.HandleFunc("GET "+PathIncidents, h.incidents)
	mux.HandleFunc("POST "+PathCheck, h.check)
	mux.HandleFunc("POST "+PathResize, h.resize)
	return &http.Server{
		Handler:           rootOnly(mux),
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, peerCred(c))
		},
	}
}

// handlers are the routes of the API.
type handlers struct{ svc Service }

func (h handlers) status(w http.ResponseWriter, r *http.Request) {
	images, err := h.svc.Status(r.Context())
	answer(w, nonNil(images), err)
}

// passing is the handler of a route whose body the service takes as it
// is: it decodes the body, calls fn with it, and answers.
func passing[In, Out any](fn func(context.Context, In) (Out, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var in In
		if readJSON(w, r, &in) {
			out, err := fn(r.Context(), in)
			answer(w, out, err)
		}
	}
}

func (h handlers) poststop(w http.ResponseWriter, r *http.Request) {
	img, err := h.svc.Poststop(r.Context(), r.Body) // the service bounds what it reads
	answer(w, img, err)
}

func (h handlers) reclaim(w http.ResponseWriter, r *http.Request) {
	var req wire.ReclaimRequest
	if readJSON(w, r, &req) {
		out, err := h.svc.Reclaim(r.Context(), req.Snapshot)
		answer(w, nonNil(out), err)
	}
}

func (h handlers) incidents(w http.ResponseWriter, r *http.Request) {
	out, err := h.svc.Incidents(r.Context())
	answer(w, nonNil(out), err)
}

func (h handlers) check(w http.ResponseWriter, r *http.Request) {
	var req wire.CheckRequest
	if readJSON(w, r, &req) {
		out, err := h.svc.Check(r.Context(), req.Target)
		answer(w, out, err)
	}
}

func (h handlers) resize(w http.ResponseWriter, r *http.Request) {
	var req wire.ResizeRequest
	if readJSON(w, r, &req) {
		out, err := h.svc.Resize(r.Context(), req.Target, req.Quota)
		answer(w, out, err)
	}
}

// answer writes v, or err with the status of its class.
func answer(w http.ResponseWriter, v any, err error) {
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, v)
}

// nonNil makes a nil list answer [], not null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
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
func (c *Client) Status(ctx context.Context) ([]api.ImageStatus, error) {
	var out []api.ImageStatus
	return out, c.Call(ctx, http.MethodGet, PathStatus, nil, &out)
}

// Reclaim repacks one snapshot's image now, or every one for "".
func (c *Client) Reclaim(ctx context.Context, snapshot string) ([]api.ReclaimOutcome, error) {
	var out []api.ReclaimOutcome
	return out, c.Call(ctx, http.MethodPost, PathReclaim, wire.ReclaimRequest{Snapshot: snapshot}, &out)
}

// Incidents lists the error monitor's incidents, oldest first.
func (c *Client) Incidents(ctx context.Context) ([]api.Incident, error) {
	var out []api.Incident
	return out, c.Call(ctx, http.MethodGet, PathIncidents, nil, &out)
}

// Resize changes the quota of a container's or snapshot's image now.
func (c *Client) Resize(ctx context.Context, target string, quota int64) (api.QuotaOutcome, error) {
	var out api.QuotaOutcome
	return out, c.Call(ctx, http.MethodPost, PathResize, wire.ResizeRequest{Target: target, Quota: quota}, &out)
}

// Check runs the online check of a container's or snapshot's image now.
func (c *Client) Check(ctx context.Context, target string) (api.CheckResult, error) {
	var out api.CheckResult
	return out, c.Call(ctx, http.MethodPost, PathCheck, wire.CheckRequest{Target: target}, &out)
}
