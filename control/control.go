// Package control is snug's control API: HTTP with JSON bodies on a
// root-only Unix socket (config control_address), served by `snug serve`,
// and Client, the one typed client through which the CLI (and later the OCI
// hooks) reach the daemon.
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
	"net"
	"net/http"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/snapshotter"
)

// Paths of the API.
const (
	PathStatus = "/v1/status"
)

// Source is what the control API reports on: the snapshotter.
type Source interface {
	Status(ctx context.Context) ([]snapshotter.ImageStatus, error)
}

// ErrDaemonDown is returned by the Client when nothing answers on the socket.
var ErrDaemonDown = errors.New("snug daemon is not running")

// peerKey carries a connection's peer credentials into its requests.
type peerKey struct{}

// NewServer returns the HTTP server of the control API for src.
func NewServer(src Source) *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathStatus, func(w http.ResponseWriter, r *http.Request) {
		images, err := src.Status(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		if images == nil {
			images = []snapshotter.ImageStatus{}
		}
		writeJSON(w, images)
	})
	return &http.Server{
		Handler:           rootOnly(mux),
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, peerCred(c))
		},
	}
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

type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(errorBody{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// Client talks to the daemon's control socket.
type Client struct {
	address string
	http    *http.Client
}

// NewClient returns a client for the control socket at address.
func NewClient(address string) *Client {
	dialer := net.Dialer{Timeout: 2 * time.Second}
	return &Client{
		address: address,
		http: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, "unix", address)
			},
		}},
	}
}

// Status returns every image the daemon serves.
func (c *Client) Status(ctx context.Context) ([]snapshotter.ImageStatus, error) {
	var out []snapshotter.ImageStatus
	return out, c.get(ctx, PathStatus, &out)
}

func (c *Client) get(ctx context.Context, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://snug"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ECONNREFUSED) {
			return fmt.Errorf("%w (no answer on %s)", ErrDaemonDown, c.address)
		}
		return fmt.Errorf("control %s: %w", c.address, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("control %s: %w", c.address, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return fmt.Errorf("snug daemon: %s", e.Error)
		}
		return fmt.Errorf("snug daemon: %s", resp.Status)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("control %s: bad answer: %w", c.address, err)
	}
	return nil
}
