package imagefs

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestUrgentToolsRunFirst: a tool run with an Urgent context gets nice
// -10; any other runs at the caller's priority.
func TestUrgentToolsRunFirst(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("raising a priority needs root")
	}
	dir := t.TempDir()
	// A stand-in e2fsck that reports its nice value (field 19 of its stat)
	// once the priority had time to change.
	script := "#!/bin/sh\nsleep 0.2\nread -r stat < /proc/$$/stat\nset -- ${stat#*) }\nshift 16\necho \"$1\"\n"
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
	for _, tc := range []struct {
		ctx  context.Context
		want string
	}{
		{context.Background(), own},
		{Urgent(context.Background()), "-10"},
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
