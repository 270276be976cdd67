package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/control"
	"github.com/snugfs/snug/control/wire"
	"github.com/snugfs/snug/hooks"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/images"
	"github.com/snugfs/snug/internal/roottest"
)

// fakeContainers stands in for the snapshotter: it records the container
// it was told of, and fails with err.
type fakeContainers struct {
	seen *images.Container
	err  error
}

func (f fakeContainers) ContainerStarting(_ context.Context, c images.Container) (images.ContainerImage, error) {
	if f.err != nil {
		return images.ContainerImage{}, f.err
	}
	*f.seen = c
	return images.ContainerImage{ID: "7", Class: c.Annotations["io.snugfs.policy"]}, nil
}

func (f fakeContainers) ContainerStopped(_ context.Context, c images.Container) (images.ContainerImage, error) {
	*f.seen = c
	return images.ContainerImage{ID: "7"}, f.err
}

// hooksOnly is a control.Service whose hook calls are the daemon's and
// whose other calls are not served.
type hooksOnly struct{ hookCalls }

func (hooksOnly) Status(context.Context) ([]api.ImageStatus, error) {
	return nil, errdefs.ErrNotImplemented
}
func (hooksOnly) Reclaim(context.Context, string) ([]api.ReclaimOutcome, error) {
	return nil, errdefs.ErrNotImplemented
}
func (hooksOnly) Incidents(context.Context) ([]api.Incident, error) {
	return nil, errdefs.ErrNotImplemented
}
func (hooksOnly) Check(context.Context, string) (api.CheckResult, error) {
	return api.CheckResult{}, errdefs.ErrNotImplemented
}
func (hooksOnly) Resize(context.Context, string, int64) (api.QuotaOutcome, error) {
	return api.QuotaOutcome{}, errdefs.ErrNotImplemented
}

// serveHooks serves the daemon's hook calls, on a snapshotter that records
// the container in seen and fails with err, for a daemon running policy.
func serveHooks(t *testing.T, seen *images.Container, policy string, err error) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "control.sock")
	l, lerr := net.Listen("unix", sock)
	if lerr != nil {
		t.Fatal(lerr)
	}
	srv := control.NewServer(hooksOnly{hookCalls{sn: fakeContainers{seen: seen, err: err}, policy: policy}})
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// TestBundleCreateFailuresDoNotHandOver: snug-runc hands a bundle create
// answered 404 or 409 over to the Go wrapper, so a container start that
// fails (a quarantined image, a busy one) is answered 500, not with its
// own class; a bad request stays 400.
func TestBundleCreateFailuresDoNotHandOver(t *testing.T) {
	roottest.Require(t) // the control API answers root only
	dir := t.TempDir()
	wrapper := filepath.Join(dir, "snug-runc")
	if err := os.WriteFile(wrapper, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	const spec = `{"ociVersion":"1.2.0","root":{"path":"rootfs"}}`
	for _, tc := range []struct {
		err  error
		want int
	}{
		{fmt.Errorf("snapshot 3: %w", imagefs.ErrQuarantined), http.StatusInternalServerError},
		{fmt.Errorf("snapshot 3: %w", imagefs.ErrBusy), http.StatusInternalServerError},
		{fmt.Errorf("snapshot 3: %w", errdefs.ErrNotFound), http.StatusInternalServerError},
		{fmt.Errorf("quota: %w", errdefs.ErrInvalidArgument), http.StatusBadRequest},
	} {
		var seen images.Container
		sock := serveHooks(t, &seen, "", tc.err)
		b := t.TempDir()
		if err := os.WriteFile(filepath.Join(b, "config.json"), []byte(spec), 0o600); err != nil {
			t.Fatal(err)
		}
		var img wire.ContainerImage
		err := control.NewClient(sock).Call(context.Background(), http.MethodPost, wire.PathBundleCreate,
			wire.Bundle{ID: "c1", Bundle: b, Wrapper: wrapper, Control: sock}, &img)
		var se *wire.StatusError
		if !errors.As(err, &se) || se.Code != tc.want {
			t.Errorf("start failing with %v: %v, want status %d", tc.err, err, tc.want)
		}
	}
}

// TestBundleCreate: the call snug-runc makes on runc create adds the
// detached poststop hook to the bundle's config.json and tells the daemon
// the container is starting, with config.json's rootfs and annotations.
// What it cannot do is refused with the status snug-runc acts on.
func TestBundleCreate(t *testing.T) {
	roottest.Require(t) // the control API answers root only
	dir := t.TempDir()
	policy := filepath.Join(dir, "config.toml")
	wrapper := filepath.Join(dir, "snug-runc")
	for _, f := range []string{policy, wrapper} {
		if err := os.WriteFile(f, nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var seen images.Container
	sock := serveHooks(t, &seen, policy, nil)
	c := control.NewClient(sock)
	bundle := func(config string) string {
		b := t.TempDir()
		if config != "" {
			if err := os.WriteFile(filepath.Join(b, "config.json"), []byte(config), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return b
	}
	const spec = `{"ociVersion":"1.2.0","root":{"path":"rootfs"},"annotations":{"io.snugfs.policy":"big"}}`
	for _, tc := range []struct {
		name string
		req  wire.Bundle
		code int // 0: success
	}{
		{"ok", wire.Bundle{ID: "c1", Bundle: bundle(spec), Wrapper: wrapper, Control: sock, Policy: policy}, 0},
		{"ok, socket named by SNUG_CONTROL", wire.Bundle{ID: "c1", Bundle: bundle(spec), Wrapper: wrapper, Control: sock}, 0},
		{"another policy", wire.Bundle{ID: "c1", Bundle: bundle(spec), Wrapper: wrapper, Control: sock, Policy: "/etc/snug/config.toml"}, http.StatusConflict},
		{"no config.json", wire.Bundle{ID: "c1", Bundle: bundle(""), Wrapper: wrapper, Control: sock}, http.StatusNotFound},
		{"broken config.json", wire.Bundle{ID: "c1", Bundle: bundle("{not json"), Wrapper: wrapper, Control: sock}, http.StatusBadRequest},
		{"relative bundle", wire.Bundle{ID: "c1", Bundle: "rel", Wrapper: wrapper, Control: sock}, http.StatusBadRequest},
		{"relative control socket", wire.Bundle{ID: "c1", Bundle: bundle(spec), Wrapper: wrapper, Control: "control.sock"}, http.StatusBadRequest},
		{"no wrapper there", wire.Bundle{ID: "c1", Bundle: bundle(spec), Wrapper: filepath.Join(dir, "none"), Control: sock}, http.StatusBadRequest},
		{"wrapper not executable", wire.Bundle{ID: "c1", Bundle: bundle(spec), Wrapper: plain, Control: sock}, http.StatusBadRequest},
	} {
		seen = images.Container{}
		var before []byte
		if tc.req.Bundle != "rel" {
			before, _ = os.ReadFile(filepath.Join(tc.req.Bundle, "config.json"))
		}
		var img wire.ContainerImage
		err := c.Call(context.Background(), http.MethodPost, wire.PathBundleCreate, tc.req, &img)
		after, _ := os.ReadFile(filepath.Join(tc.req.Bundle, "config.json"))
		if tc.code != 0 {
			var se *wire.StatusError
			if !errors.As(err, &se) || se.Code != tc.code {
				t.Errorf("%s: %v, want status %d", tc.name, err, tc.code)
			}
			if tc.req.Bundle != "rel" && string(after) != string(before) {
				t.Errorf("%s: config.json changed to %s", tc.name, after)
			}
			if seen.ID != "" {
				t.Errorf("%s: the daemon was told the container starts", tc.name)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if img.ID != "7" || img.Class != "big" || seen.ID != "c1" || seen.RootFS != filepath.Join(tc.req.Bundle, "rootfs") {
			t.Errorf("%s: answered %+v after telling %+v", tc.name, img, seen)
		}
		var doc struct {
			Hooks struct{ Poststop []specs.Hook } `json:"hooks"`
		}
		if err := json.Unmarshal(after, &doc); err != nil || len(doc.Hooks.Poststop) != 1 {
			t.Fatalf("%s: config.json after: %v\n%s", tc.name, err, after)
		}
		want := hooks.WrapperPoststop(wrapper, sock)
		if got := doc.Hooks.Poststop[0]; got.Path != want.Path || !slices.Equal(got.Args, want.Args) {
			t.Errorf("%s: poststop hook %+v, want %+v", tc.name, got, want)
		}
	}
}

// TestPoststopState: snug-runc's poststop hook sends the OCI state as it
// is; the daemon reads it as snug-hook would and reports the stop, and
// refuses a state that is not one with 400.
func TestPoststopState(t *testing.T) {
	roottest.Require(t) // the control API answers root only
	var seen images.Container
	c := control.NewClient(serveHooks(t, &seen, "", nil))
	bundle := t.TempDir()
	state := json.RawMessage(fmt.Sprintf(`{"ociVersion":"1.2.0","id":"c1","status":"stopped","bundle":%q}`, bundle))
	var img wire.ContainerImage
	if err := c.Call(context.Background(), http.MethodPost, wire.PathPoststop, state, &img); err != nil || img.ID != "7" {
		t.Fatalf("%v, %+v", err, img)
	}
	if seen.ID != "c1" || seen.RootFS != filepath.Join(bundle, "rootfs") {
		t.Errorf("told %+v", seen)
	}
	seen = images.Container{}
	var se *wire.StatusError
	if err := c.Call(context.Background(), http.MethodPost, wire.PathPoststop, json.RawMessage(`{"id":"c1","bundle":"rel"}`), &img); !errors.As(err, &se) || se.Code != http.StatusBadRequest || seen.ID != "" {
		t.Errorf("a bad state: %v; told %+v", err, seen)
	}
}
