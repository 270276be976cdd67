package fsck

import (
	"context"
	"strings"
	"sync"
	"time"

	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
)

// Publish queues a step of an incident as a containerd event on topic
// /snug/incident/<step>, in the namespace of its first container. The
// event is built at once, from the incident as it is now, and sent by one
// goroutine in the order the steps were published: the pipeline does not
// wait for containerd, which answers in seconds when many containers start
// at once.
func (c *Containerd) Publish(ctx context.Context, inc *Incident, step Step) {
	ns := eventNamespace
	var names []string
	for _, ref := range inc.Containers {
		if len(names) == 0 {
			ns = ref.Namespace
		}
		names = append(names, ref.Namespace+"/"+ref.ID)
	}
	ann := map[string]string{
		"io.snugfs.incident":   inc.ID,
		"io.snugfs.snapshot":   inc.Snapshot,
		"io.snugfs.image":      inc.Image,
		"io.snugfs.state":      string(inc.State),
		"io.snugfs.step":       step.Name.String(),
		"io.snugfs.result":     step.Result,
		"io.snugfs.error":      inc.Error,
		"io.snugfs.containers": strings.Join(names, ","),
		"io.snugfs.took":       step.Duration().String(),
	}
	if step.Detail != "" {
		ann["io.snugfs.detail"] = step.Detail
	}
	ev := incidentEvent{ns: ns, step: step.Name.String(), desc: &apitypes.Descriptor{MediaType: EventMediaType, Annotations: ann}}
	c.events.push(context.WithoutCancel(ctx), ev, c.send)
}

// send publishes one event, waiting at most 5 s for containerd.
func (c *Containerd) send(ctx context.Context, ev incidentEvent) {
	cl, err := c.get()
	if err != nil {
		log.G(ctx).WithError(err).Debug("incident event not published")
		return
	}
	pctx, cancel := context.WithTimeout(namespaces.WithNamespace(ctx, ev.ns), 5*time.Second)
	defer cancel()
	if err := cl.EventService().Publish(pctx, TopicPrefix+ev.step, ev.desc); err != nil {
		log.G(ctx).WithError(err).WithField("step", ev.step).Warn("incident event not published")
	}
}

// incidentEvent is one event, ready to send.
type incidentEvent struct {
	ns, step string
	desc     *apitypes.Descriptor
}

// eventDrain bounds how long Close waits for the queued events.
const eventDrain = 5 * time.Second

// maxQueuedEvents bounds the queue: past it (containerd gone for long) the
// oldest events are dropped, and the log says so.
const maxQueuedEvents = 1024

// eventQueue sends events in order from one goroutine, started when the
// first event comes and ended when the queue is empty.
type eventQueue struct {
	mu      sync.Mutex
	pending []queuedEvent
	running bool
	idle    chan struct{} // closed when the sender ends; nil while none ran
}

type queuedEvent struct {
	ctx  context.Context
	ev   incidentEvent
	send func(context.Context, incidentEvent)
}

func (q *eventQueue) push(ctx context.Context, ev incidentEvent, send func(context.Context, incidentEvent)) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) >= maxQueuedEvents {
		log.G(ctx).WithField("step", q.pending[0].ev.step).Warn("incident event dropped: containerd is not taking events")
		q.pending = q.pending[1:]
	}
	q.pending = append(q.pending, queuedEvent{ctx, ev, send})
	if !q.running {
		q.running = true
		q.idle = make(chan struct{})
		go q.run(q.idle)
	}
}

func (q *eventQueue) run(idle chan struct{}) {
	defer close(idle)
	for {
		q.mu.Lock()
		if len(q.pending) == 0 {
			q.running = false
			q.mu.Unlock()
			return
		}
		e := q.pending[0]
		q.pending = q.pending[1:]
		q.mu.Unlock()
		e.send(e.ctx, e.ev)
	}
}

// drain waits, for at most d, until every queued event was sent.
func (q *eventQueue) drain(d time.Duration) {
	q.mu.Lock()
	idle := q.idle
	q.mu.Unlock()
	if idle == nil {
		return
	}
	select {
	case <-idle:
	case <-time.After(d):
	}
}
