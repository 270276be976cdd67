package imagefs

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/snugfs/snug/internal/urgent"
)

// TestUrgentToolsRunFirst: a tool run with an Urgent context gets nice
// -10 and urgent's CPU cgroup (where the host has one for it); any other
// runs at the caller's priority, in the caller's cgroup.
func TestUrgentToolsRunFirst(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("raising a priority needs root")
	}
	dir := t.TempDir()
	// A stand-in e2fsck that reports its nice value (field 19 of its stat)
	// once the priority had time to change.
	// And its CPU cgroup (cgroup v1's cpu line, v2's single line).
	script := "#!/bin/sh\nsleep 0.2\nread -r stat < /proc/$$/stat\nset -- ${stat#*) }\nshift 16\n" +
		"cg=$(grep -E '^[0-9]+:(cpu|cpu,[^:]*|):' /proc/$$/cgroup | head -1 | cut -d: -f3)\necho \"$1 $cg\"\n"
	if err := os.WriteFile(filepath.Join(dir, "e2fsck"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	UseTools(dir)
	defer UseTools("")
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	own := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))[16]
	ownCgroup := cpuCgroup(t, "self")
	urgentCgroup := urgent.Cgroup
	if err := urgent.Setup(); err != nil {
		t.Logf("no CPU cgroup for urgent work here (%v): the urgent tool stays in ours", err)
		urgentCgroup = ownCgroup
	}
	for _, tc := range []struct {
		ctx  context.Context
		want string
	}{
		{context.Background(), own + " " + ownCgroup},
		{Urgent(context.Background()), "-10 " + urgentCgroup},
	} {
		run, err := runTool(tc.ctx, "e2fsck")
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(run.Stdout); got != tc.want {
			t.Errorf("urgent %v: nice %q, want %q (stderr %q)", isUrgent(tc.ctx), got, tc.want, run.Stderr)
		}
	}
}

// cpuCgroup is process pid's CPU cgroup as /proc/PID/cgroup names it.
func cpuCgroup(t *testing.T, pid string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) == 3 && (f[1] == "" || slices.Contains(strings.Split(f[1], ","), "cpu")) {
			return f[2]
		}
	}
	t.Fatalf("no cpu cgroup in /proc/%s/cgroup:\n%s", pid, b)
	return ""
}
