package fsck

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// npdDefaultPattern is node-problem-detector's stock rule for the
// ReadonlyFilesystem condition, which contrib's rule replaces.
const npdDefaultPattern = "Remounting filesystem read-only"

// npdRules reads contrib/kubernetes/node-problem-detector-rules.json.
func npdRules(t *testing.T) []struct{ Type, Condition, Reason, Pattern string } {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "contrib", "kubernetes", "node-problem-detector-rules.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Rules []struct{ Type, Condition, Reason, Pattern string }
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Rules) != 1 || doc.Rules[0].Condition != "ReadonlyFilesystem" || doc.Rules[0].Type != "permanent" {
		t.Fatalf("rules %+v, want one permanent ReadonlyFilesystem rule", doc.Rules)
	}
	return doc.Rules
}

// npdMatches is whether node-problem-detector's log monitor would match
// pattern after the kernel logged lines: it compiles the pattern to match
// at the end of its buffer of recent lines, joined with newlines.
func npdMatches(t *testing.T, pattern string, lines ...string) bool {
	t.Helper()
	re, err := regexp.Compile(pattern + `\z`)
	if err != nil {
		t.Fatalf("pattern %q: %v", pattern, err)
	}
	return re.MatchString(strings.Join(lines, "\n"))
}

// TestNodeProblemDetectorRule: contrib's rule for node-problem-detector
// keeps the ReadonlyFilesystem condition for ext4 on the host's disks and
// leaves out snug's images (loop devices), whose errors snug repairs.
func TestNodeProblemDetectorRule(t *testing.T) {
	pattern := npdRules(t)[0].Pattern
	for _, tc := range []struct {
		lines []string
		want  bool
	}{
		{[]string{"EXT4-fs (vda): Remounting filesystem read-only"}, true},
		{[]string{"EXT4-fs (sda1): Remounting filesystem read-only"}, true},
		{[]string{"EXT4-fs (nvme0n1p2): Remounting filesystem read-only"}, true},
		{[]string{"EXT4-fs (dm-3): Remounting filesystem read-only"}, true},
		{[]string{"EXT4-fs (md127): Remounting filesystem read-only"}, true},
		{[]string{"EXT4-fs (xvda1): Remounting filesystem read-only"}, true},
		{[]string{"EXT4-fs (mmcblk0p2): Remounting filesystem read-only"}, true},
		{[]string{"EXT4-fs (loop0): Remounting filesystem read-only"}, false},
		{[]string{"EXT4-fs (loop267): Remounting filesystem read-only"}, false},
		// The monitor matches over its buffer of recent lines.
		{[]string{"EXT4-fs (vda): mounted filesystem", "EXT4-fs (loop3): Remounting filesystem read-only"}, false},
		{[]string{"EXT4-fs (loop3): Remounting filesystem read-only", "EXT4-fs (vda): Remounting filesystem read-only"}, true},
		{[]string{"EXT4-fs (vda): Remounting filesystem read-only", "loop3: detected capacity change from 0 to 8"}, false},
	} {
		if got := npdMatches(t, pattern, tc.lines...); got != tc.want {
			t.Errorf("%q: matched %v, want %v", tc.lines, got, tc.want)
		}
	}
}

// TestNodeProblemDetectorRuleOnKernelLines: the line this kernel logs when
// ext4 stops a snug image after an error is one node-problem-detector's
// stock rule turns into a permanent ReadonlyFilesystem condition of the
// node, and contrib's rule does not.
func TestNodeProblemDetectorRuleOnKernelLines(t *testing.T) {
	m := mountedImage(t, "npd")
	kmsg, err := os.OpenFile("/dev/kmsg", os.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer kmsg.Close()
	if _, err := kmsg.Seek(0, io.SeekEnd); err != nil { // only what the kernel logs from now
		t.Fatal(err)
	}
	triggerError(t, m)
	dev := filepath.Base(m.Device)
	var line string
	buf := make([]byte, 8192)
	for end := time.Now().Add(5 * time.Second); line == ""; {
		n, err := kmsg.Read(buf)
		switch {
		case errors.Is(err, unix.EAGAIN):
			if time.Now().After(end) {
				t.Fatalf("the kernel logged no %q for %s", npdDefaultPattern, dev)
			}
			time.Sleep(10 * time.Millisecond)
			continue
		case errors.Is(err, unix.EPIPE): // records overwritten meanwhile: go on
			continue
		case err != nil:
			t.Fatal(err)
		}
		// A record is "PRIORITY,SEQUENCE,TIME,FLAGS;MESSAGE\n".
		_, msg, _ := strings.Cut(string(buf[:n]), ";")
		msg, _, _ = strings.Cut(msg, "\n")
		if strings.Contains(msg, "("+dev+")") && strings.Contains(msg, npdDefaultPattern) {
			line = msg
		}
	}
	t.Logf("kernel: %q", line)
	if !npdMatches(t, npdDefaultPattern, line) {
		t.Errorf("node-problem-detector's stock rule does not match %q: contrib's rule is not needed", line)
	}
	if npdMatches(t, npdRules(t)[0].Pattern, line) {
		t.Errorf("contrib's rule matches %q, the line of a snug image's error", line)
	}
}
