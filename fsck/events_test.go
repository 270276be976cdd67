package fsck

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestEventQueue: publishing never waits for containerd, the events go in
// the order they were published, Close's drain waits for them, and a
// queue containerd does not take drops its oldest events past the bound.
func TestEventQueue(t *testing.T) {
	var q eventQueue
	var mu sync.Mutex
	var sent []string
	release := make(chan struct{})
	send := func(ctx context.Context, ev incidentEvent) {
		<-release // containerd busy
		mu.Lock()
		sent = append(sent, ev.step)
		mu.Unlock()
	}
	start := time.Now()
	var want []string
	for i := range 10 {
		step := fmt.Sprint(i)
		want = append(want, step)
		q.push(context.Background(), incidentEvent{step: step}, send)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("publishing waited for the sender: %v", d)
	}
	close(release)
	q.drain(5 * time.Second)
	mu.Lock()
	got := slices.Clone(sent)
	mu.Unlock()
	if !slices.Equal(got, want) {
		t.Fatalf("sent %v, want %v", got, want)
	}

	// Past the bound, the oldest go.
	block := make(chan struct{})
	var q2 eventQueue
	var first []string
	q2.push(context.Background(), incidentEvent{step: "held"}, func(context.Context, incidentEvent) { <-block })
	time.Sleep(50 * time.Millisecond) // the sender holds "held"
	for i := range maxQueuedEvents + 3 {
		q2.push(context.Background(), incidentEvent{step: fmt.Sprint(i)}, func(_ context.Context, ev incidentEvent) { first = append(first, ev.step) })
	}
	close(block)
	q2.drain(5 * time.Second)
	if len(first) != maxQueuedEvents || first[0] != "3" {
		t.Fatalf("after overflow: %d sent, first %q; want %d from \"3\"", len(first), first[0], maxQueuedEvents)
	}
}
