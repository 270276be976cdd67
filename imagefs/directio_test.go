package imagefs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/internal/roottest"
)

// TestSetDirectIO switches a mounted image's loop device to the host's page
// cache and back, as a policy class does under a running container: the
// kernel's own view (sysfs) follows, the data written before and after is
// there, and an fsync still makes the device flush in both modes.
func TestSetDirectIO(t *testing.T) {
	path, dir := newImage(t, 128*mib, 64*mib)
	ctx := context.Background()
	m := mountImage(t, path, dir)
	if on, err := m.DirectIO(); err != nil || !on {
		t.Fatalf("DirectIO of an image mounted with direct I/O = %v, %v", on, err)
	}
	writeSynced(t, m, "before", "written with direct I/O")
	for i, on := range []bool{false, false, true} {
		got, switched, err := m.SetDirectIO(ctx, on)
		if err != nil || got != on {
			t.Fatalf("SetDirectIO(%v) = %v, %v", on, got, err)
		}
		if want := i != 1; switched != want { // the second call finds the mode asked for
			t.Fatalf("SetDirectIO(%v), call %d: switched %v, want %v", on, i+1, switched, want)
		}
		if sys := readDio(t, m.Device); sys != on {
			t.Fatalf("after SetDirectIO(%v) sysfs says dio %v", on, sys)
		}
		if now, err := m.DirectIO(); err != nil || now != on {
			t.Fatalf("DirectIO after SetDirectIO(%v) = %v, %v", on, now, err)
		}
		before, err := roottest.Flushes(m.Device)
		if err != nil {
			t.Fatal(err)
		}
		writeSynced(t, m, "after", "written after the switch")
		after, err := roottest.Flushes(m.Device)
		if err != nil {
			t.Fatal(err)
		}
		if after <= before {
			t.Fatalf("direct I/O %v: an fsync made no flush of %s (%d before, %d after)", on, m.Device, before, after)
		}
	}
	for name, want := range map[string]string{"before": "written with direct I/O", "after": "written after the switch"} {
		if got, err := os.ReadFile(filepath.Join(m.Dir, name)); err != nil || string(got) != want {
			t.Fatalf("%s: %q, %v", name, got, err)
		}
	}
}

// TestSetDirectIORefusesWhatItCannotChange: a read-only mount keeps how it
// was attached, and a Mounted whose device was detached (its image
// unmounted) and perhaps attached to another image since is refused, never
// switched.
func TestSetDirectIORefusesWhatItCannotChange(t *testing.T) {
	path, dir := newImage(t, 128*mib, 64*mib)
	ctx := context.Background()
	err := WithMount(ctx, path, MountOptions{ReadOnly: true, DirectIO: true}, func(m *Mounted) error {
		_, _, err := m.SetDirectIO(ctx, false)
		if err == nil || !strings.Contains(err.Error(), "read-only") {
			t.Errorf("SetDirectIO of a read-only mount: %v, want refused", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	m := mountImage(t, path, dir)
	stale := *m
	if err := m.Unmount(ctx); err != nil {
		t.Fatal(err)
	}
	other, _ := newImage(t, 128*mib, 64*mib)
	om, err := Mount(ctx, other, filepath.Join(dir, "mnt"), MountOptions{DirectIO: true})
	if err != nil {
		t.Fatal(err)
	}
	defer om.Unmount(ctx)
	if _, _, err := stale.SetDirectIO(ctx, false); err == nil {
		t.Fatalf("SetDirectIO through %s after its image was unmounted: no error", stale.Device)
	} else if om.Device == stale.Device && !errors.Is(err, ErrNotMounted) {
		t.Fatalf("SetDirectIO through %s, now another image's: %v, want ErrNotMounted", stale.Device, err)
	}
	if on, err := om.DirectIO(); err != nil || !on {
		t.Fatalf("the other image's device after the refused switch: direct I/O %v, %v", on, err)
	}
}

// writeSynced writes a file on the mounted image and fsyncs it.
func writeSynced(t *testing.T, m *Mounted, name, data string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(m.Dir, name), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// readDio is the loop driver's own report of whether device uses direct I/O.
func readDio(t *testing.T, device string) bool {
	t.Helper()
	b, err := os.ReadFile("/sys/block/" + filepath.Base(device) + "/loop/dio")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b)) == "1"
}

// BenchmarkDirectIO is what reading a mounted image's I/O mode costs: the
// images manager reads it at every container start (Serve) and for every
// image in snug status.
func BenchmarkDirectIO(b *testing.B) {
	path, dir := newImage(b, 128*mib, 64*mib)
	m := mountImage(b, path, dir)
	b.ResetTimer()
	for range b.N {
		if _, err := m.DirectIO(); err != nil {
			b.Fatal(err)
		}
	}
}
