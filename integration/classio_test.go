package integration

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
)

// classIOPolicy gives class db buffered loop devices, the base direct I/O.
const classIOPolicy = containerPolicy + "[policies.db.image]\ndirect_io = false\n"

// TestClassIOMode: a class's image.direct_io puts its containers' loop
// devices in that mode, whether a snapshot label picks the class (known at
// Prepare: the image comes from the pool, attached with the base's mode) or
// an OCI annotation does (known at createRuntime, with the image mounted
// already), while the other containers keep the base policy's. Inside a
// switched container an fsync still makes its device flush. A reload that
// changes the class switches the running containers' devices back.
func TestClassIOMode(t *testing.T) {
	s := startStack(t, classIOPolicy)
	s.runClassContainers("io", "db")
	s.requireIO(map[string]string{"io-plain": "direct", "io-label": "buffered", "io-annotation": "buffered"})
	out, err := s.snug.Snug(context.Background(), "status")
	if err != nil || !rowHasWords(out, "/io-label", "db", "buffered") || !rowHasWords(out, "/io-plain", "-", "direct") {
		t.Fatalf("snug status's table does not show the class and I/O mode: %v\n%s", err, out)
	}

	s.requireFsyncFlushes("io-label")
	s.requireFsyncFlushes("io-plain")

	policy, err := os.ReadFile(s.snug.Config)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(policy), "direct_io = false", "direct_io = true", 1)
	if edited == string(policy) {
		t.Fatalf("the policy file has no class direct_io to change:\n%s", policy)
	}
	if err := os.WriteFile(s.snug.Config, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	s.snug.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, s.snug, "policy reloaded", 1)
	s.requireIO(map[string]string{"io-plain": "direct", "io-label": "direct", "io-annotation": "direct"})
}

// runClassContainers imports the test image and starts three sleeping
// containers: PREFIX-plain on the base policy, PREFIX-label with the
// snapshot label of class, PREFIX-annotation with its OCI annotation (read
// by the createRuntime hook, through snug-runc).
func (s *stack) runClassContainers(prefix, class string) {
	s.t.Helper()
	s.importImage()
	wrapper := s.runcWrapper()
	s.ctr("run", "-d", "--snapshotter", "snug", testImageRef, prefix+"-plain", "/bin/sleep", "600")
	s.ctr("run", "-d", "--snapshotter", "snug", "--snapshotter-label", config.LabelClass+"="+class,
		testImageRef, prefix+"-label", "/bin/sleep", "600")
	s.ctr("run", "-d", "--runc-binary", wrapper, "--annotation", config.AnnotationClass+"="+class,
		"--snapshotter", "snug", testImageRef, prefix+"-annotation", "/bin/sleep", "600")
}

// requireFsyncFlushes checks that an fsync in the container makes its
// image's loop device flush (what puts the data on the host's disk).
func (s *stack) requireFsyncFlushes(container string) {
	s.t.Helper()
	dev := s.loopOf(container)
	before, err := roottest.Flushes(dev)
	if err != nil {
		s.t.Fatal(err)
	}
	s.ctr("tasks", "exec", "--exec-id", "fsync-"+container, container, "/bin/dd", "if=/dev/zero", "of=/synced", "bs=4k", "count=1", "conv=fsync")
	if after, err := roottest.Flushes(dev); err != nil || after <= before {
		s.t.Fatalf("%s: an fsync in the container made no flush of %s (%d before, %d after, %v)", container, dev, before, after, err)
	}
}

// requireIO waits (a few seconds at most) until each container's image
// shows the I/O mode wanted, in snug status and in the loop driver's own
// sysfs flag.
func (s *stack) requireIO(want map[string]string) {
	s.t.Helper()
	var got map[string]string
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		got = map[string]string{}
		for c := range want {
			mode := s.activeImage(c).IO
			b, err := os.ReadFile("/sys/block/" + filepath.Base(s.loopOf(c)) + "/loop/dio")
			if err != nil {
				s.t.Fatal(err)
			}
			got[c] = mode + "/dio=" + strings.TrimSpace(string(b))
		}
		ok := true
		for c, w := range want {
			dio := map[string]string{"direct": "1", "buffered": "0"}[w]
			ok = ok && got[c] == w+"/dio="+dio
		}
		if ok {
			return
		}
		if time.Now().After(end) {
			s.t.Fatalf("I/O modes (snug status/sysfs) %v, want %v", got, want)
		}
	}
}

// loopOf is the loop device of the container's rw image.
func (s *stack) loopOf(container string) string {
	s.t.Helper()
	im := s.activeImage(container)
	devs, err := imagefs.FindLoops(im.Path)
	if err != nil || len(devs) != 1 {
		s.t.Fatalf("the loop device of %s (%s): %v, %v", container, im.Path, devs, err)
	}
	return devs[0]
}

// rowHasWords reports whether the row of snug status's table for the
// snapshot ending in suffix has each of words among its fields.
func rowHasWords(table, suffix string, words ...string) bool {
	for _, l := range strings.Split(table, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || !strings.HasSuffix(f[1], suffix) {
			continue
		}
		for _, w := range words {
			if !slices.Contains(f, w) {
				return false
			}
		}
		return true
	}
	return false
}
