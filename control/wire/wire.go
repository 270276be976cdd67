// Package wire is the control API's protocol: its paths, the bodies of the
// calls OCI hooks make, and the HTTP-over-Unix-socket transport every
// client uses. It needs only the standard library, so the hook binary
// (cmd/snug-hook) that imports it starts in about a millisecond.
package wire

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/internal/errclass"
)

// Paths of the API.
const (
	PathStatus         = "/v1/status"
	PathContainerStart = "/v1/containers/start"
	PathContainerStop  = "/v1/containers/stop"
	PathBundleCreate   = "/v1/bundles/create"
	// PathPoststop takes a poststop hook's OCI state as it is, from
	// snug-runc's hook mode, which does not parse JSON.
	PathPoststop  = "/v1/hooks/poststop"
	PathReclaim   = "/v1/reclaim"
	PathIncidents = "/v1/incidents"
	PathCheck     = "/v1/check"
	PathResize    = "/v1/resize"
)

// Container is the body of the container start and stop calls: what an OCI
// hook knows of the container.
type Container struct {
	ID          string            `json:"id"`
	RootFS      string            `json:"rootfs,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Bundle is the body of the bundle create call, which snug-runc (the runc
// wrapper, cmd/snug-runc) makes on runc create and run: the daemon adds
// snug's poststop hook to the bundle's config.json and does what the
// createRuntime hook does, so the wrapper need not start a Go process.
type Bundle struct {
	// ID is the container's id, from runc's command line.
	ID string `json:"id"`
	// Bundle is the bundle directory, an absolute path.
	Bundle string `json:"bundle"`
	// Wrapper is snug-runc's absolute path: the poststop hook is
	// `snug-runc hook poststop --control Control`.
	Wrapper string `json:"wrapper"`
	// Control is the control socket the call came on, for the hook.
	Control string `json:"control"`
	// Policy, when set, is the policy file the wrapper reads: a daemon
	// running another one answers 409. The wrapper sets it when it found
	// the socket at the default address rather than being told
	// (SNUG_CONTROL), so it never edits a bundle for the wrong daemon.
	Policy string `json:"policy,omitempty"`
}

// ContainerImage answers the container calls: the image the container runs
// on, if it is on snug.
type ContainerImage struct {
	// ID is the snapshot id; empty when the container is not on snug.
	ID    string `json:"id,omitempty"`
	Class string `json:"class,omitempty"`
	// FreeBytes is the free space in the window after the call.
	FreeBytes int64 `json:"free_bytes,omitempty"`
}

// ReclaimRequest is the body of a reclaim call: one snapshot by its key in
// snug's store, or every active snapshot when Snapshot is empty.
type ReclaimRequest struct {
	Snapshot string `json:"snapshot,omitempty"`
}

// CheckRequest is the body of a check call: a container id, or a snapshot
// by its key in snug's store or its id.
type CheckRequest struct {
	Target string `json:"target"`
}

// ResizeRequest is the body of a resize call: a container id, or a
// snapshot by its key in snug's store or its id, and its new quota.
type ResizeRequest struct {
	Target string `json:"target"`
	Quota  int64  `json:"quota_bytes"`
}

// ErrorBody is the body of every error answer.
type ErrorBody struct {
	Error string `json:"error"`
}

// StatusError is a call the daemon answered with an error.
type StatusError struct {
	// Code is the HTTP status: 404 for a snapshot or container it does
	// not know, 409 for one that is busy, 400 for a bad request.
	Code    int
	Message string
}

func (e *StatusError) Error() string { return "snug daemon: " + e.Message }

// ErrDaemonDown is returned when nothing answers on the socket.
var ErrDaemonDown = errclass.New("snug daemon is not running", errdefs.ErrUnavailable)

// Client makes calls on the control socket.
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

// ContainerStarting tells the daemon a container is about to start (the
// prestart hook): its window gets its headroom before the call returns.
func (c *Client) ContainerStarting(ctx context.Context, ct Container) (ContainerImage, error) {
	var out ContainerImage
	return out, c.Call(ctx, http.MethodPost, PathContainerStart, ct, &out)
}

// ContainerStopped tells the daemon a container stopped (the poststop
// hook). It returns at once; the reclaim runs in the background.
func (c *Client) ContainerStopped(ctx context.Context, ct Container) (ContainerImage, error) {
	var out ContainerImage
	return out, c.Call(ctx, http.MethodPost, PathContainerStop, ct, &out)
}

// Call sends in (if not nil) as JSON to path and decodes the answer into out.
func (c *Client) Call(ctx context.Context, method, path string, in, out any) error {
	var reqBody io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		reqBody = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://snug"+path, reqBody)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
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
		var e ErrorBody
		if json.Unmarshal(body, &e) != nil || e.Error == "" {
			e.Error = resp.Status
		}
		return &StatusError{Code: resp.StatusCode, Message: e.Error}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("control %s: bad answer: %w", c.address, err)
	}
	return nil
}
