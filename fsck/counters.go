package fsck

import (
	"strconv"
	"sync"
	"sync/atomic"
)

// counters are the doctor's cumulative counts, for metrics.
type counters struct {
	reports, incidents, repaired, quarantined, restarted atomic.Int64

	mu    sync.Mutex // protects steps
	steps map[stepKey]*StepStat
}

type stepKey struct{ name, result string }

// StepStat counts the steps of one name and result since the daemon
// started, and the time they took.
type StepStat struct {
	Step    string  `json:"step"`
	Result  string  `json:"result"`
	Count   int64   `json:"count"`
	Seconds float64 `json:"seconds"`
}

func (c *counters) step(s Step) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.steps == nil {
		c.steps = map[stepKey]*StepStat{}
	}
	result := s.Result
	if _, err := strconv.Atoi(result); err == nil {
		result = "ok" // a count of containers
	}
	k := stepKey{s.Name.String(), result}
	st, ok := c.steps[k]
	if !ok {
		st = &StepStat{Step: s.Name.String(), Result: result}
		c.steps[k] = st
	}
	st.Count++
	st.Seconds += s.Duration().Seconds()
}

// StepStats returns the step counters.
func (d *Doctor) StepStats() []StepStat {
	d.counts.mu.Lock()
	defer d.counts.mu.Unlock()
	out := make([]StepStat, 0, len(d.counts.steps))
	for _, st := range d.counts.steps {
		out = append(out, *st)
	}
	return out
}

// Counts are the doctor's cumulative counters, for metrics.
type Counts struct {
	// Reports counts error reports received (each may stand for more
	// than one error).
	Reports     int64 `json:"reports"`
	Incidents   int64 `json:"incidents"`
	Repaired    int64 `json:"repaired"`
	Quarantined int64 `json:"quarantined"`
	Restarted   int64 `json:"restarted"`
	// Open is the number of incidents being worked on.
	Open int `json:"open"`
}

// Counts returns the doctor's counters.
func (d *Doctor) Counts() Counts {
	d.mu.Lock()
	open := len(d.active)
	d.mu.Unlock()
	return Counts{
		Reports: d.counts.reports.Load(), Incidents: d.counts.incidents.Load(),
		Repaired: d.counts.repaired.Load(), Quarantined: d.counts.quarantined.Load(),
		Restarted: d.counts.restarted.Load(), Open: open,
	}
}
