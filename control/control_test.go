package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/control/wire"
	"github.com/snugfs/snug/internal/errclass"
	"github.com/snugfs/snug/internal/roottest"
)

// fakeService stands in for the daemon: these tests are about the wire
// (encoding, errors, peer check); the daemon's service behind the socket
// is tested in package daemon and in integration/.
type fakeService struct {
	images []api.ImageStatus
	err    error
	seen   *wire.Container
}

func (f fakeService) Status(context.Context) ([]api.ImageStatus, error) {
	return f.images, f.err
}

func (f fakeService) ContainerStarting(_ context.Context, c wire.Container) (wire.ContainerImage, error) {
	*f.seen = c
	return wire.ContainerImage{ID: "7", Class: c.Annotations["io.snugfs.policy"], FreeBytes: 42}, f.err
}

func (f fakeService) ContainerStopped(_ context.Context, c wire.Container) (wire.ContainerImage, error) {
	*f.seen = c
	return wire.ContainerImage{ID: "7"}, f.err
}

func (f fakeService) BundleCreate(_ context.Context, b wire.Bundle) (wire.ContainerImage, error) {
	switch b.ID {
	case "missing":
		return wire.ContainerImage{}, fmt.Errorf("bundle %s: %w", b.Bundle, fs.ErrNotExist)
	case "other-policy":
		return wire.ContainerImage{}, fmt.Errorf("another policy: %w", errdefs.ErrConflict)
	}
	return wire.ContainerImage{ID: "7", Class: b.ID}, f.err
}

func (f fakeService) Poststop(_ context.Context, state io.Reader) (wire.ContainerImage, error) {
	var st struct{ ID string }
	data, err := io.ReadAll(state)
	if err != nil || json.Unmarshal(data, &st) != nil || st.ID == "" {
		return wire.ContainerImage{}, fmt.Errorf("bad state: %w", errdefs.ErrInvalidArgument)
	}
	*f.seen = wire.Container{ID: st.ID}
	return wire.ContainerImage{ID: "7"}, f.err
}

func (f fakeService) Reclaim(_ context.Context, key string) ([]api.ReclaimOutcome, error) {
	if key == "missing" {
		return nil, fmt.Errorf("reclaim %s: %w", key, errdefs.ErrNotFound)
	}
	return []api.ReclaimOutcome{{Snapshot: key, ID: "7", Reason: "manual"}}, f.err
}

func (f fakeService) Incidents(context.Context) ([]api.Incident, error) {
	return []api.Incident{{ID: "i1", Snapshot: "7", State: "resolved", Steps: []api.Step{{Name: "detect"}}}}, f.err
}

func (f fakeService) Check(_ context.Context, target string) (api.CheckResult, error) {
	switch target {
	case "busy":
		return api.CheckResult{}, fmt.Errorf("check 7: %w", errclass.New("an incident is open", errdefs.ErrFailedPrecondition))
	case "missing":
		return api.CheckResult{}, fmt.Errorf("check %s: %w", target, errdefs.ErrNotFound)
	}
	return api.CheckResult{Snapshot: "7", Result: api.ScrubResult{Method: "frozen"}}, f.err
}

func (f fakeService) Resize(_ context.Context, target string, quota int64) (api.QuotaOutcome, error) {
	switch {
	case target == "missing":
		return api.QuotaOutcome{}, fmt.Errorf("resize %s: %w", target, errdefs.ErrNotFound)
	case quota < 300<<20:
		return api.QuotaOutcome{}, fmt.Errorf("quota below usage: it stores 400MiB: %w", errdefs.ErrInvalidArgument)
	}
	return api.QuotaOutcome{ID: "7", QuotaChange: api.QuotaChange{QuotaBefore: 256 << 20, QuotaAfter: quota}}, f.err
}

func serve(t *testing.T, svc Service) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "control.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(svc)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestStatusRoundTrip(t *testing.T) {
	roottest.Require(t) // the control API answers root only
	want := []api.ImageStatus{{Snapshot: "default/3/c1", Kind: "active", ID: "7",
		Stats: api.Stats{QuotaBytes: 1 << 30, FootprintBytes: 123, Health: "ok"}}}
	got, err := NewClient(serve(t, fakeService{images: want})).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Snapshot != "default/3/c1" || got[0].QuotaBytes != 1<<30 || got[0].FootprintBytes != 123 {
		t.Errorf("got %+v", got)
	}
}

func TestStatusErrorIsReported(t *testing.T) {
	roottest.Require(t) // the control API answers root only
	_, err := NewClient(serve(t, fakeService{err: errors.New("metadata store closed")})).Status(context.Background())
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
	var seen wire.Container
	c := NewClient(serve(t, fakeService{seen: &seen}))
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
	var seen wire.Container
	sock := serve(t, fakeService{seen: &seen})
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
	c := NewClient(serve(t, fakeService{}))
	ctx := context.Background()
	incs, err := c.Incidents(ctx)
	if err != nil || len(incs) != 1 || incs[0].ID != "i1" || incs[0].Steps[0].Name != "detect" {
		t.Fatalf("incidents: %+v, %v", incs, err)
	}
	res, err := c.Check(ctx, "ctr-1")
	if err != nil || res.Snapshot != "7" || res.Result.Method != "frozen" {
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
	c := NewClient(serve(t, fakeService{}))
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
		{"POST", PathPoststop, `{"id":"c1"}x`},
		{"POST", PathBundleCreate, `{"id":"missing","bundle":"/b"}`},
	} {
		f.Add(seed.method, seed.path, []byte(seed.body))
	}
	var seen wire.Container
	h := NewServer(fakeService{seen: &seen}).Handler
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
	srv := NewServer(fakeService{})
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
		out, err := cmd.CombinedOutput()
		answer := string(out)
		if !strings.Contains(answer, "ANSWER ") { // the helper prints it whatever the answer
			t.Fatalf("the client did not run as uid %d (can it reach %s?): %v\n%s", uid, bin, err, answer)
		}
		if uid == 0 && !strings.Contains(answer, "ANSWER <nil>") {
			t.Errorf("root was not answered:\n%s", answer)
		}
		if uid != 0 && !strings.Contains(answer, "for root only") {
			t.Errorf("uid %d was answered:\n%s", uid, answer)
		}
	}
}

// TestBundleAndPoststopAnswers: the two calls snug-runc makes come back
// with the statuses it acts on: 404 for a bundle the daemon cannot see, 409
// for another policy, 400 for a state that is not one.
func TestBundleAndPoststopAnswers(t *testing.T) {
	roottest.Require(t) // the control API answers root only
	var seen wire.Container
	c := NewClient(serve(t, fakeService{seen: &seen}))
	ctx := context.Background()
	for id, code := range map[string]int{"c1": 0, "missing": http.StatusNotFound, "other-policy": http.StatusConflict} {
		var img wire.ContainerImage
		err := c.Call(ctx, http.MethodPost, PathBundleCreate, wire.Bundle{ID: id, Bundle: "/b"}, &img)
		var se *wire.StatusError
		switch {
		case code == 0 && (err != nil || img.ID != "7" || img.Class != id):
			t.Errorf("bundle %s: %+v, %v", id, img, err)
		case code != 0 && (!errors.As(err, &se) || se.Code != code):
			t.Errorf("bundle %s: %v, want status %d", id, err, code)
		}
	}
	var img wire.ContainerImage
	if err := c.Call(ctx, http.MethodPost, PathPoststop, json.RawMessage(`{"id":"c1"}`), &img); err != nil || img.ID != "7" || seen.ID != "c1" {
		t.Errorf("poststop: %+v, %v; told %+v", img, err, seen)
	}
	var se *wire.StatusError
	if err := c.Call(ctx, http.MethodPost, PathPoststop, json.RawMessage(`{"bundle":"rel"}`), &img); !errors.As(err, &se) || se.Code != http.StatusBadRequest {
		t.Errorf("a bad state: %v, want 400", err)
	}
}
