package traffic

import (
	"context"
	"testing"
	"time"
)

func TestTrafficLull(t *testing.T) {
	var tr Meter
	ctx := context.Background()

	start := time.Now()
	if !tr.WaitLull(ctx, 100*time.Millisecond, time.Second) || time.Since(start) > 50*time.Millisecond {
		t.Errorf("no traffic ever: waited %v, want no wait", time.Since(start))
	}

	tr.Mark()
	start = time.Now()
	if !tr.WaitLull(ctx, 100*time.Millisecond, time.Second) {
		t.Fatal("WaitLull false with a live context")
	}
	if took := time.Since(start); took < 90*time.Millisecond {
		t.Errorf("a mark just now: waited %v, want about the 100 ms lull", took)
	}

	// Marks that keep coming delay it up to the limit, not forever.
	stop := make(chan struct{})
	defer close(stop)
	tr.Mark()
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				tr.Mark()
			}
		}
	}()
	start = time.Now()
	tr.WaitLull(ctx, 100*time.Millisecond, 300*time.Millisecond)
	if took := time.Since(start); took < 290*time.Millisecond {
		t.Errorf("steady marks: waited %v, want the 300 ms limit", took)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if tr.WaitLull(cctx, time.Second, time.Second) {
		t.Error("WaitLull true with an ended context")
	}
}
