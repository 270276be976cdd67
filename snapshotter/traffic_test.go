package snapshotter

import (
	"context"
	"testing"
	"time"
)

func TestTrafficLull(t *testing.T) {
	var tr traffic
	ctx := context.Background()

	start := time.Now()
	if !tr.waitLull(ctx, 100*time.Millisecond, time.Second) || time.Since(start) > 50*time.Millisecond {
		t.Errorf("no traffic ever: waited %v, want no wait", time.Since(start))
	}

	tr.mark()
	start = time.Now()
	if !tr.waitLull(ctx, 100*time.Millisecond, time.Second) {
		t.Fatal("waitLull false with a live context")
	}
	if took := time.Since(start); took < 90*time.Millisecond {
		t.Errorf("a mark just now: waited %v, want about the 100 ms lull", took)
	}

	// Marks that keep coming delay it up to the limit, not forever.
	stop := make(chan struct{})
	defer close(stop)
	tr.mark()
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				tr.mark()
			}
		}
	}()
	start = time.Now()
	tr.waitLull(ctx, 100*time.Millisecond, 300*time.Millisecond)
	if took := time.Since(start); took < 290*time.Millisecond {
		t.Errorf("steady marks: waited %v, want the 300 ms limit", took)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if tr.waitLull(cctx, time.Second, time.Second) {
		t.Error("waitLull true with an ended context")
	}
}
