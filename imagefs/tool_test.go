package imagefs

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// TestUrgentThreadStaysWithItsGoroutine: UrgentThread raises the priority
// of the calling goroutine's thread only, and Go never runs other work on
// that thread: it ends with the goroutine (or, when it is the process's
// main thread, is parked for good), and threads the runtime starts
// meanwhile do not inherit its priority.
func TestUrgentThreadStaysWithItsGoroutine(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("raising a priority needs root")
	}
	niceOf := func(tid int) (int, bool) {
		// getpriority returns 20 - nice for PRIO_PROCESS.
		p, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
		return 20 - p, err == nil
	}
	before, _ := niceOf(unix.Gettid())
	type thread struct{ tid, nice int }
	got := make(chan thread)
	go func() {
		UrgentThread()
		// Blocking calls on the locked thread make the runtime start
		// threads for the other goroutines.
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() { defer wg.Done(); time.Sleep(20 * time.Millisecond) }()
		}
		time.Sleep(50 * time.Millisecond)
		wg.Wait()
		n, _ := niceOf(unix.Gettid())
		got <- thread{unix.Gettid(), n}
	}()
	urgent := <-got
	if urgent.nice != urgentNice {
		t.Errorf("urgent thread at nice %d, want %d", urgent.nice, urgentNice)
	}
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		_, alive := niceOf(urgent.tid)
		if !alive || urgent.tid == os.Getpid() {
			break // ended, or the main thread, which Go parks instead
		}
		if time.Now().After(end) {
			t.Fatalf("thread %d at nice %d outlived its goroutine", urgent.tid, urgent.nice)
		}
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		if n, ok := niceOf(tid); ok && tid != urgent.tid && n != before {
			t.Errorf("thread %d at nice %d, the process at %d", tid, n, before)
		}
	}
}
