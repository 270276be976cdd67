package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/control/wire"
	"github.com/snugfs/snug/fsck"
	"github.com/snugfs/snug/hooks"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
	"github.com/snugfs/snug/snapshotter"
)

// fakeSource stands in for the snapshotter: these tests are about the
// wire (encoding, errors, peer check); the real snapshotter behind the
// socket is tested in integration/.
type fakeSource struct {
	images []snapshotter.ImageStatus
	err    error
	seen   *snapshotter.Container
}

func (f fakeSource) Status(context.Context) ([]snapshotter.ImageStatus, error) {
	return f.images, f.err
}

func (f fakeSource) ContainerStarting(_ context.Context, c snapshotter.Container) (snapshotter.ContainerImage, error) {
	*f.seen = c
	return snapshotter.ContainerImage{ID: "7", Class: c.Annotations["io.snugfs.policy"], FreeBytes: 42}, f.err
}

func (f fakeSource) ContainerStopped(_ context.Context, c snapshotter.Container) (snapshotter.ContainerImage, error) {
	*f.seen = c
	return snapshotter.ContainerImage{ID: "7"}, f.err
}

func (f fakeSource) Reclaim(_ context.Context, key string) ([]snapshotter.ReclaimOutcome, error) {
	if key == "missing" {
		return nil, fmt.Errorf("reclaim %s: %w", key, errdefs.ErrNotFound)
	}
	return []snapshotter.ReclaimOutcome{{Snapshot: key, ID: "7", Reason: "manual"}}, f.err
}

func (f fakeSource) Incidents(context.Context) ([]fsck.Incident, error) {
	return []fsck.Incident{{ID: "i1", Snapshot: "7", State: fsck.StateResolved, Steps: []fsck.Step{{Name: "detect"}}}}, f.err
}

func (f fakeSource) Check(_ context.Context, target string) (fsck.CheckResult, error) {
	switch target {
	case "busy":
		return fsck.CheckResult{}, fmt.Errorf("check 7: %w", fsck.ErrIncidentOpen)
	case "missing":
		return fsck.CheckResult{}, fmt.Errorf("check %s: %w", target, errdefs.ErrNotFound)
	}
	return fsck.CheckResult{Snapshot: "7", Result: imagefs.ScrubResult{Method: imagefs.ScrubFrozen}}, f.err
}

func (f fakeSource) Resize(_ context.Context, target string, quota int64) (snapshotter.QuotaOutcome, error) {
	switch {
	case target == "missing":
		return snapshotter.QuotaOutcome{}, fmt.Errorf("resize %s: %w", target, errdefs.ErrNotFound)
	case quota < 300<<20:
		return snapshotter.QuotaOutcome{}, fmt.Errorf("%w: %w: it stores 400MiB", errdefs.ErrInvalidArgument, imagefs.ErrQuotaBelowUsage)
	}
	return snapshotter.QuotaOutcome{ID: "7", QuotaChange: imagefs.QuotaChange{QuotaBefore: 256 << 20, QuotaAfter: quota}}, f.err
}

func serve(t *testing.T, src Source) string {
	t.Helper()
	return servePolicy(t, src, "")
}

// servePolicy serves src as a daemon running the policy file policy.
func servePolicy(t *testing.T, src Source, policy string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "control.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(src, policy)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestStatusRoundTrip(t *testing.T) {
	roottest.Require(t) // the control API answers root only
	want := []snapshotter.ImageStatus{{Snapshot: "default/3/c1", Kind: "active", ID: "7",
		Stats: imagefs.Stats{QuotaBytes: 1 << 30, FootprintBytes: 123, Health: "ok"}}}
	got, err := NewClient(serve(t, fakeSource{images: want})).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Snapshot != "default/3/c1" || got[0].QuotaBytes != 1<<30 || got[0].FootprintBytes != 123 {
		t.Errorf("got %+v", got)
	}
}

func TestStatusErrorIsReported(t *testing.T) {
	roottest.Require(t) // the control API answers root only
	_, err := NewClient(serve(t, fakeSource{err: errors.New("metadata store closed")})).Status(context.Background())
	if err == nil || !strings.Contains(err.Error(), "metadata store closed") {
		t.Errorf("error = %v", err)
	}
}

func TestDaemonDown(t *testing.T) {
	_, err := NewClient(filepath.Join(t.TempDir(), "none.sock")).Status(context.Background())
	if !errors.Is(err, ErrDaemonDown) {
		t.Errorf("error = %v, want ErrDaemonDown", err)
	}
}

func TestContainerCallsRoundTrip(t *testing.T) {
	roottest.Require(t)
	var seen snapshotter.Container
	c := NewClient(serve(t, fakeSource{seen: &seen}))
	ctx := context.Background()
	img, err := c.ContainerStarting(ctx, Container{ID: "web", RootFS: "/run/x/rootfs", Annotations: map[string]string{"io.snugfs.policy": "db"}})
	if err != nil || img.ID != "7" || img.Class != "db" || img.FreeBytes != 42 {
		t.Fatalf("start: %+v, %v", img, err)
	}
	if seen.ID != "web" || seen.RootFS != "/run/x/rootfs" {
		t.Fatalf("daemon saw %+v", seen)
	}
	if _, err := c.ContainerStopped(ctx, Container{ID: "web"}); err != nil || seen.ID != "web" {
		t.Fatalf("stop: %v, saw %+v", err, seen)
	}
	out, err := c.Reclaim(ctx, "k")
	if err != nil || len(out) != 1 || out[0].Snapshot != "k" {
		t.Fatalf("reclaim: %+v, %v", out, err)
	}
	if _, err := c.Reclaim(ctx, "missing"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("reclaim of a missing snapshot: %v", err)
	}
}

func TestBadBodyIsRefused(t *testing.T) {
	roottest.Require(t)
	var seen snapshotter.Container
	sock := serve(t, fakeSource{seen: &seen})
	hc := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", sock)
	}}}
	for _, body := range []string{"garbage", `{"id":"x","bogus":1}`, `{"id":` + strings.Repeat(" ", 2<<20) + `"x"}`} {
		resp, err := hc.Post("http://snug"+PathContainerStart, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("body %.20q: status %d, want 400", body, resp.StatusCode)
		}
	}
	if seen.ID != "" {
		t.Errorf("a bad body reached the snapshotter: %+v", seen)
	}
}

func TestIncidentsAndCheck(t *testing.T) {
	c := NewClient(serve(t, fakeSource{}))
	ctx := context.Background()
	incs, err := c.Incidents(ctx)
	if err != nil || len(incs) != 1 || incs[0].ID != "i1" || incs[0].Steps[0].Name != "detect" {
		t.Fatalf("incidents: %+v, %v", incs, err)
	}
	res, err := c.Check(ctx, "ctr-1")
	if err != nil || res.Snapshot != "7" || res.Result.Method != imagefs.ScrubFrozen {
		t.Fatalf("check: %+v, %v", res, err)
	}
	for target, want := range map[string]int{"busy": http.StatusConflict, "missing": http.StatusNotFound} {
		_, err := c.Check(ctx, target)
		var se *wire.StatusError
		if !errors.As(err, &se) || se.Code != want {
			t.Errorf("check %s: %v, want a %d", target, err, want)
		}
	}
}

// TestResizeAnswers: a quota change comes back as the daemon did it, and
// its refusals keep their class over the wire (400 for a quota it refused,
// 404 for a target it does not know), with the daemon's message.
func TestResizeAnswers(t *testing.T) {
	roottest.Require(t) // the control API answers root only
	c := NewClient(serve(t, fakeSource{}))
	ctx := context.Background()
	out, err := c.Resize(ctx, "c1", 1<<30)
	if err != nil || out.QuotaAfter != 1<<30 || out.QuotaBefore != 256<<20 {
		t.Fatalf("resize: %+v, %v", out, err)
	}
	for _, tc := range []struct {
		target string
		quota  int64
		code   int
		text   string
	}{
		{"c1", 100 << 20, http.StatusBadRequest, "it stores 400MiB"},
		{"missing", 1 << 30, http.StatusNotFound, "resize missing"},
	} {
		_, err := c.Resize(ctx, tc.target, tc.quota)
		var se *wire.StatusError
		if !errors.As(err, &se) || se.Code != tc.code || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("resize %s to %d: %v, want status %d with %q", tc.target, tc.quota, err, tc.code, tc.text)
		}
	}
}

// FuzzControlAPI sends arbitrary requests to every path of the API, as root:
// whatever the body, the server answers with a status, never panics, and
// refuses what it cannot decode with 400.
func FuzzControlAPI(f *testing.F) {
	for _, seed := range []struct {
		method, path, body string
	}{
		{"POST", PathContainerStart, `{"id":"c1","rootfs":"/x","annotations":{"io.snugfs.policy":"big"}}`},
		{"POST", PathContainerStop, `{"id":"c1"}`},
		{"POST", PathReclaim, `{"snapshot":"default/3/x"}`},
		{"POST", PathCheck, `{"target":"busy"}`},
		{"GET", PathStatus, ``},
		{"GET", PathIncidents, ``},
		{"POST", PathCheck, `{"target":"x","extra":1}`},
		{"POST", PathReclaim, `[`},
		{"POST", PathResize, `{"target":"c1","quota_bytes":1073741824}`},
		{"POST", PathResize, `{"target":"c1","quota_bytes":-1}`},
	} {
		f.Add(seed.method, seed.path, []byte(seed.body))
	}
	var seen snapshotter.Container
	h := NewServer(fakeSource{seen: &seen}, "").Handler
	root := context.WithValue(context.Background(), peerKey{}, &unix.Ucred{Uid: 0})
	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		req, err := http.NewRequestWithContext(root, method, "http://snug"+path, bytes.NewReader(body))
		if err != nil {
			return // not a request a client could send
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusConflict, http.StatusInternalServerError, http.StatusMovedPermanently, http.StatusTemporaryRedirect:
		default:
			t.Fatalf("%s %s: status %d", method, path, rec.Code)
		}
		if rec.Code == http.StatusOK && method == "POST" && !json.Valid(body) {
			t.Fatalf("%s %s accepted a body that is not JSON: %q", method, path, body)
		}
	})
}

// TestHelperClient is the client process of TestOnlyRootIsAnswered: it
// calls the socket SNUG_TEST_SOCKET and prints the answer.
func TestHelperClient(t *testing.T) {
	sock := os.Getenv("SNUG_TEST_SOCKET")
	if sock == "" {
		t.Skip("the client half of TestOnlyRootIsAnswered")
	}
	_, err := NewClient(sock).Status(context.Background())
	fmt.Printf("ANSWER %v\n", err)
}

// TestOnlyRootIsAnswered: even with the socket's permissions opened up,
// the server checks each connection's peer (SO_PEERCRED) and answers a
// process that is not root with 403.
func TestOnlyRootIsAnswered(t *testing.T) {
	roottest.Require(t)
	// A directory the other user can reach, for the socket and a copy of
	// this test binary to run as that user.
	dir, err := os.MkdirTemp("", "snug-peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "control.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(fakeSource{}, "")
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	os.Chmod(sock, 0o666)
	bin := filepath.Join(dir, "client.test")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, uid := range []uint32{65534, 0} {
		cmd := exec.Command(bin, "-test.run=^TestHelperClient$", "-test.v")
		cmd.Env = append(os.Environ(), "SNUG_TEST_SOCKET="+sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, _ := cmd.CombinedOutput()
		answer := string(out)
		if uid == 0 && !strings.Contains(answer, "ANSWER <nil>") {
			t.Errorf("root was not answered:\n%s", answer)
		}
		if uid != 0 && !strings.Contains(answer, "for root only") {
			t.Errorf("uid %d was answered:\n%s", uid, answer)
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
	var seen snapshotter.Container
	sock := servePolicy(t, fakeSource{seen: &seen}, policy)
	c := NewClient(sock)
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
		seen = snapshotter.Container{}
		var before []byte
		if tc.req.Bundle != "rel" {
			before, _ = os.ReadFile(filepath.Join(tc.req.Bundle, "config.json"))
		}
		var img wire.ContainerImage
		err := c.Call(context.Background(), http.MethodPost, PathBundleCreate, tc.req, &img)
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
	var seen snapshotter.Container
	c := NewClient(serve(t, fakeSource{seen: &seen}))
	bundle := t.TempDir()
	state := json.RawMessage(fmt.Sprintf(`{"ociVersion":"1.2.0","id":"c1","status":"stopped","bundle":%q}`, bundle))
	var img wire.ContainerImage
	if err := c.Call(context.Background(), http.MethodPost, PathPoststop, state, &img); err != nil || img.ID != "7" {
		t.Fatalf("%v, %+v", err, img)
	}
	if seen.ID != "c1" || seen.RootFS != filepath.Join(bundle, "rootfs") {
		t.Errorf("told %+v", seen)
	}
	seen = snapshotter.Container{}
	var se *wire.StatusError
	if err := c.Call(context.Background(), http.MethodPost, PathPoststop, json.RawMessage(`{"id":"c1","bundle":"rel"}`), &img); !errors.As(err, &se) || se.Code != http.StatusBadRequest || seen.ID != "" {
		t.Errorf("a bad state: %v; told %+v", err, seen)
	}
}
