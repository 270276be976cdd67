package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snugfs/snug/api"
)

// TestResizeRunningContainer is issue 19's scenario, as an operator does
// it with `snug resize` on a running container: a 256 MiB quota raised to
// 1 GiB while a writer runs, which goes on past 256 MiB; lowered back to
// 512 MiB while it stores 400 MiB, after which the writer gets ENOSPC at
// about 512 MiB; lowered below what it stores: refused, nothing changed.
// The image is clean (snug check) after each change, and the quota
// survives a kill -9 of snug.
func TestResizeRunningContainer(t *testing.T) {
	s := startStack(t, containerPolicy)
	s.importImage()
	const name = "resized"
	s.ctr("run", "-d", "--snapshotter", "snug", "--snapshotter-label", fmt.Sprintf("containerd.io/snapshot/max-size=%d", 256<<20),
		testImageRef, name, "/bin/sleep", "600")
	defer s.ctrErr("tasks", "kill", "-s", "KILL", name)
	resize := func(quota string) (api.QuotaOutcome, string, error) {
		out, err := s.snug.Snug(context.Background(), "resize", "--json", "--quota", quota, name)
		var res api.QuotaOutcome
		if err == nil {
			if jerr := json.Unmarshal([]byte(out), &res); jerr != nil {
				t.Fatalf("snug resize --json: %v\n%s", jerr, out)
			}
		}
		return res, out, err
	}
	// write runs a writer in the container: mib blocks of 1 MiB appended
	// to path, each fsync'd (a few ms each, so a resize can land while it
	// runs); it says whether the writer met ENOSPC.
	write := func(path string, mib int) (string, bool) {
		out, _ := s.ctrErr("tasks", "exec", "--exec-id", fmt.Sprintf("w%d", execSeq.Add(1)), name, "/bin/sh", "-c",
			fmt.Sprintf(`i=0; while [ $i -lt %d ]; do dd if=/dev/zero of=%s bs=1M count=1 seek=$i conv=notrunc,fsync 2>/tmp/dd.err || { cat /tmp/dd.err; break; }; i=$((i+1)); done; echo wrote=$i MiB`, mib, path))
		return out, strings.Contains(out, "No space left on device")
	}
	if im := s.activeImage(name); im.Stats.QuotaBytes != 256<<20 {
		t.Fatalf("quota %d, want 256 MiB from the label", im.Stats.QuotaBytes)
	}
	if out, full := write("/a", 150); full {
		t.Fatalf("150 MiB into a 256 MiB quota:\n%s", out)
	}

	// Raised while a writer runs (with ~90 MiB of room left when it
	// starts, a few hundred ms of writing): it goes on past 256 MiB.
	done := make(chan string)
	go func() {
		out, full := write("/b", 250)
		if full {
			out = "ENOSPC: " + out
		}
		done <- out
	}()
	time.Sleep(200 * time.Millisecond)
	res, out, err := resize("1GiB")
	if err != nil || res.QuotaAfter != 1<<30 {
		t.Fatalf("resize to 1GiB: %v\n%s", err, out)
	}
	if out := <-done; strings.HasPrefix(out, "ENOSPC") {
		t.Fatalf("writer past 256 MiB after the raise to 1 GiB: %s", out)
	}
	requireCheckClean(t, s.snug, name)
	// snug status shows the new quota and the ceiling it can be raised to.
	if out, err := s.snug.Snug(context.Background(), "status"); err != nil || !statusRowHas(out, "/"+name, "1GiB", "32GiB") {
		t.Fatalf("snug status after the raise: %v\n%s", err, out)
	}
	used := s.activeImage(name).Stats.UsedBytes
	t.Logf("stores %d MiB at a 1 GiB quota", used>>20)
	if used < 390<<20 {
		t.Fatalf("stores %d MiB, want about 400", used>>20)
	}

	// Below what it stores: refused with a message saying so.
	if _, out, err := resize("300MiB"); err == nil || !strings.Contains(out, "more than a quota of 300MiB holds") {
		t.Fatalf("resize to 300MiB with %d MiB stored: %v\n%s", used>>20, err, out)
	}
	if q := s.activeImage(name).Stats.QuotaBytes; q != 1<<30 {
		t.Fatalf("a refused resize left the quota at %d", q)
	}
	// Above the ceiling (the default policy's max_quota, 32 GiB): refused.
	if _, out, err := resize("100GiB"); err == nil || !strings.Contains(out, "ceiling") {
		t.Fatalf("resize above the ceiling: %v\n%s", err, out)
	}

	// Lowered to 512 MiB: the next writer stops at about 512 MiB.
	if res, out, err := resize("512MiB"); err != nil || res.QuotaAfter != 512<<20 {
		t.Fatalf("resize to 512MiB: %v\n%s", err, out)
	}
	requireCheckClean(t, s.snug, name)
	out, full := write("/c", 400)
	im := s.activeImage(name)
	t.Logf("at 512 MiB: ENOSPC %t, stores %d MiB\n%s", full, im.Stats.UsedBytes>>20, out)
	if !full || im.Stats.UsedBytes > 512<<20 || im.Stats.UsedBytes < 480<<20 {
		t.Fatalf("lowered to 512 MiB: ENOSPC %t with %d MiB stored", full, im.Stats.UsedBytes>>20)
	}
	requireCheckClean(t, s.snug, name)

	// kill -9 of snug: the quota is in the image and holds after the restart.
	s.snug.Restart(syscall.SIGKILL)
	if q := s.activeImage(name).Stats.QuotaBytes; q != 512<<20 {
		t.Fatalf("after kill -9: quota %d, want 512 MiB", q)
	}
	s.exec(name, "/bin/rm", "-f", "/c")
	if out, full := write("/d", 200); !full {
		t.Fatalf("after kill -9 and a restart, 200 MiB more fit in a 512 MiB quota holding 400 MiB:\n%s", out)
	}
	requireCheckClean(t, s.snug, name)
}

// statusRowHas reports whether the row of snug status's table for the
// snapshot ending in suffix shows quota and ceiling in their columns.
func statusRowHas(table, suffix, quota, ceiling string) bool {
	lines := strings.Split(table, "\n")
	if len(lines) == 0 {
		return false
	}
	head := strings.Fields(lines[0])
	qi, ci := slices.Index(head, "QUOTA"), slices.Index(head, "CEILING")
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		// The columns up to SWELL are one word each ("1.4s ago" follows).
		if len(f) > max(qi, ci, 1) && strings.HasSuffix(f[1], suffix) {
			return qi >= 0 && ci >= 0 && f[qi] == quota && f[ci] == ceiling
		}
	}
	return false
}
