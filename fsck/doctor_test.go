package fsck

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
)

// hostImages is a minimal Images over real mounted images: the pipeline's
// steps run on the real kernel and e2fsprogs, without a snapshotter or
// containerd (the integration tests run those).
type hostImages struct {
	mu          sync.Mutex
	mounted     map[string]*imagefs.Mounted
	dirs        map[string]string
	quarantined map[string]string
	obs         *Doctor
}

func (h *hostImages) MountedImage(id string) (*imagefs.Mounted, bool, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	m, ok := h.mounted[id]
	return m, false, ok
}

func (h *hostImages) Offline(ctx context.Context, id string, fn func(string) error) error {
	h.mu.Lock()
	m := h.mounted[id]
	delete(h.mounted, id)
	h.mu.Unlock()
	if m == nil {
		return errors.New("not mounted")
	}
	h.obs.Unmounting(id)
	if err := m.Unmount(ctx); err != nil {
		return err
	}
	if err := fn(m.Image); err != nil {
		h.mu.Lock()
		h.quarantined[id] = err.Error()
		h.mu.Unlock()
		return err
	}
	return h.mount(ctx, id, m.Image)
}

func (h *hostImages) MarkDamaged(id, reason string) error { return nil } // no layers here

func (h *hostImages) Quarantine(ctx context.Context, id, reason string) error {
	h.mu.Lock()
	h.quarantined[id] = reason
	m := h.mounted[id]
	delete(h.mounted, id)
	h.mu.Unlock()
	if m == nil {
		return nil
	}
	h.obs.Unmounting(id)
	return m.Unmount(ctx)
}

func (h *hostImages) mount(ctx context.Context, id, image string) error {
	m, err := imagefs.Mount(ctx, image, h.dirs[id], imagefs.MountOptions{})
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.mounted[id] = m
	h.mu.Unlock()
	h.obs.Mounted(ctx, id, false, m)
	return nil
}

// newImages makes n mounted images, ids "1".."n", unmounted when the test
// ends.
func newImages(t *testing.T, n int) *hostImages {
	t.Helper()
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	ctx := context.Background()
	dir := roottest.TempDir(t)
	h := &hostImages{mounted: map[string]*imagefs.Mounted{}, dirs: map[string]string{}, quarantined: map[string]string{}}
	for i := 1; i <= n; i++ {
		id := string(rune('0' + i))
		path := filepath.Join(dir, id+".img")
		if err := imagefs.Create(ctx, path, imagefs.CreateOptions{Quota: 128 * mib, Window: 32 * mib}); err != nil {
			t.Fatal(err)
		}
		h.dirs[id] = filepath.Join(dir, id)
		os.Mkdir(h.dirs[id], 0o755)
		m, err := imagefs.Mount(ctx, path, h.dirs[id], imagefs.MountOptions{})
		if err != nil {
			t.Fatal(err)
		}
		h.mounted[id] = m
		os.WriteFile(filepath.Join(m.Dir, "data"), []byte("kept"), 0o644)
		roottest.Syncfs(t, m.Dir) // committed before the errors to come
	}
	t.Cleanup(func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, m := range h.mounted {
			m.Unmount(ctx)
		}
	})
	return h
}

// runDoctor starts a doctor over h with policy p, watching every image.
func runDoctor(t *testing.T, dir string, h *hostImages, p config.FsckPolicy) (*Doctor, func()) {
	t.Helper()
	d, err := NewDoctor(dir, p, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.obs = d
	h.mu.Lock()
	for id, m := range h.mounted {
		d.Mounted(context.Background(), id, false, m)
	}
	h.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return d, stop
}

func waitFinal(t *testing.T, d *Doctor, id string) Incident {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		for _, inc := range d.Incidents() {
			if inc.Snapshot == id && Final(inc.State) {
				return inc
			}
		}
	}
	t.Fatalf("no closed incident for %s: %+v", id, d.Incidents())
	return Incident{}
}

func steps(inc Incident) []string {
	var out []string
	for _, s := range inc.Steps {
		out = append(out, s.Name.String())
	}
	return out
}

func policy(action string) config.FsckPolicy {
	p := config.Default().Fsck
	p.Action = action
	return p
}

// TestDoctorActions: each fsck.action goes as far as it says, on a real
// ext4 error, and no further.
func TestDoctorActions(t *testing.T) {
	for _, tc := range []struct {
		action string
		state  State
		steps  []string
	}{
		{"notify", StateReported, []string{"detect", "reported"}},
		{"freeze", StateHeld, []string{"detect", "freeze", "held"}},
		// The error turned the image read-only: it needs a repair.
		{"check", StateHeld, []string{"detect", "freeze", "check", "held"}},
		// ext4 stopped the image at the error: the repair policy goes
		// straight to it, without the freeze (the check records "not run").
		{"repair", StateResolved, []string{"detect", "check", "stop", "repair", "restart", "resolved"}},
	} {
		t.Run(tc.action, func(t *testing.T) {
			h := newImages(t, 2)
			d, _ := runDoctor(t, t.TempDir(), h, policy(tc.action))
			triggerError(t, h.mounted["1"])
			inc := waitFinal(t, d, "1")
			if inc.State != tc.state || !slices.Equal(steps(inc), tc.steps) {
				t.Fatalf("state %s, steps %v; want %s, %v (%s)", inc.State, steps(inc), tc.state, tc.steps, inc.Reason)
			}
			if tc.action == "repair" {
				if inc.Verify == nil || !inc.Verify.Clean() {
					t.Fatalf("verify after repair: %+v", inc.Verify)
				}
				m, _, ok := h.MountedImage("1")
				if !ok || m.ErrorRecord().Count != 0 {
					t.Fatal("the repaired image is not mounted again without errors")
				}
				if b, err := os.ReadFile(filepath.Join(m.Dir, "data")); err != nil || string(b) != "kept" {
					t.Fatalf("data after the repair: %q, %v", b, err)
				}
			}
			for _, other := range d.Incidents() {
				if other.Snapshot != "1" {
					t.Errorf("an incident for the healthy image: %+v", other)
				}
			}
		})
	}
}

// TestDoctorResumesAfterRestart: an incident a daemon left in the middle
// (its repair step started, the image unmounted) is finished by the next
// one, and the errors the image still carries join it rather than open a
// second incident.
func TestDoctorResumesAfterRestart(t *testing.T) {
	h := newImages(t, 1)
	dir := t.TempDir()
	d, _ := NewDoctor(dir, policy("repair"), h, nil)
	h.obs = d
	m := h.mounted["1"]
	triggerError(t, m)
	// What a daemon killed in the repair step leaves: the incident file,
	// its last step started and not ended.
	inc := &Incident{ID: "crashed-1", Snapshot: "1", Image: m.Image, Source: "fanotify", Errors: 1, DetectedAt: time.Now(), State: StateStopped,
		Steps: []Step{{Name: "detect", Start: time.Now(), End: time.Now()}, {Name: "check", Start: time.Now(), End: time.Now(), Result: "clean"},
			{Name: "stop", Start: time.Now(), End: time.Now(), Result: "0"}, {Name: "repair", Start: time.Now()}}}
	if err := d.store.save(inc, true); err != nil {
		t.Fatal(err)
	}
	d.mon.Close()

	d2, _ := runDoctor(t, dir, h, policy("repair"))
	got := waitFinal(t, d2, "1")
	if got.ID != "crashed-1" || got.State != StateResolved {
		t.Fatalf("resumed incident: %s %s (%s)", got.ID, got.State, got.Reason)
	}
	n := 0
	for _, s := range got.Steps {
		if s.Name == "repair" {
			n++
		}
	}
	if n != 1 || len(d2.Incidents()) != 1 || got.Errors < 2 {
		t.Fatalf("repair steps %d, incidents %d, errors %d: %v", n, len(d2.Incidents()), got.Errors, steps(got))
	}
}

// TestCheckAndScrub: the online check finds a corruption of a running
// image and opens an incident; the scheduled scrub checks every image.
func TestCheckAndScrub(t *testing.T) {
	roottest.Require(t, "debugfs")
	h := newImages(t, 2)
	p := policy("check")
	p.ScrubInterval = 300 * time.Millisecond // the policy file's minimum is 1m
	d, _ := runDoctor(t, t.TempDir(), h, p)
	res, err := d.Check(context.Background(), "2")
	if err != nil || !res.Result.Clean() || res.Incident != "" {
		t.Fatalf("check of a healthy image: %+v, %v", res, err)
	}
	if _, err := d.Check(context.Background(), "9"); !errors.Is(err, imagefs.ErrNotMounted) {
		t.Fatalf("check of no image: %v", err)
	}
	// Corrupt image 1 behind ext4's back; the scrub finds it.
	m := h.mounted["1"]
	if err := m.Thaw(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Scrub(context.Background(), imagefs.ScrubFrozen); err != nil { // checkpoints the journal
		t.Fatal(err)
	}
	if out, err := execDebugfs(m.Image, "sif /data block[0] 0x12345678"); err != nil {
		t.Fatalf("debugfs: %v %s", err, out)
	}
	inc := waitFinal(t, d, "1")
	if inc.Source != "check" || inc.Check == nil || !inc.Check.Uncorrected() {
		t.Fatalf("incident from the scrub: source %s, check %+v", inc.Source, inc.Check)
	}
	if _, err := d.Check(context.Background(), "2"); err != nil {
		t.Fatal(err)
	}
}

func TestStoreKeepsOpenAndNewest(t *testing.T) {
	dir := t.TempDir()
	st, err := openStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now()
	for i := range 5 {
		state := StateResolved
		if i == 0 {
			state = StateStopped // open: kept whatever its age
		}
		if err := st.save(&Incident{ID: "i" + string(rune('0'+i)), Snapshot: "1", DetectedAt: base.Add(time.Duration(i) * time.Second), State: state}, true); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "i9.json.tmp"), []byte("{"), 0o600) // a cut write
	st.prune(2)
	var ids []string
	for _, inc := range st.list() {
		ids = append(ids, inc.ID)
	}
	if !slices.Equal(ids, []string{"i0", "i3", "i4"}) {
		t.Fatalf("kept %v, want the open one and the 2 newest closed", ids)
	}
	again, err := openStore(dir)
	if err != nil || len(again.list()) != 3 {
		t.Fatalf("reopened: %d incidents, %v", len(again.list()), err)
	}
	if _, err := os.Stat(filepath.Join(dir, "i9.json.tmp")); !os.IsNotExist(err) {
		t.Fatal("a cut write was left behind")
	}
}

// TestDoctorQuarantinesWhatE2fsckCannotFix: with fsck.repair = "preen",
// e2fsck -fp refuses a damaged extent header (it needs a human), so the
// image is quarantined: left unmounted, marked with the reason, the
// incident keeps e2fsck's report.
func TestDoctorQuarantinesWhatE2fsckCannotFix(t *testing.T) {
	roottest.Require(t, "debugfs")
	h := newImages(t, 1)
	p := policy("repair")
	p.Repair = "preen"
	d, _ := runDoctor(t, t.TempDir(), h, p)
	m := h.mounted["1"]
	if _, err := m.Scrub(context.Background(), imagefs.ScrubFrozen); err != nil { // checkpoints the journal
		t.Fatal(err)
	}
	if out, err := execDebugfs(m.Image, "sif /data block[0] 0x12345678"); err != nil {
		t.Fatalf("debugfs: %v %s", err, out)
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(filepath.Join(m.Dir, "data")); err == nil {
		t.Fatal("read the corrupted file without an error")
	}
	inc := waitFinal(t, d, "1")
	if inc.State != StateQuarantined || inc.Repair == nil || !inc.Repair.Uncorrected() {
		t.Fatalf("state %s (%s), repair %+v", inc.State, inc.Reason, inc.Repair)
	}
	if _, _, mounted := h.MountedImage("1"); mounted {
		t.Error("a quarantined image was mounted again")
	}
	if reason := h.quarantined["1"]; reason == "" {
		t.Error("the image was not marked")
	}
	if !strings.Contains(inc.Repair.Output, "UNEXPECTED INCONSISTENCY") {
		t.Errorf("the incident lacks e2fsck's report:\n%s", inc.Repair.Output)
	}
}
