package fsck

import (
	"context"
	"fmt"

	"github.com/snugfs/snug/config"
)

// stepSpec is one row of the pipeline: the open state its step starts
// from, when the policy or the image routes the incident elsewhere (skip),
// the step's work (run), and the state each of its outcomes leads to
// (next).
type stepSpec struct {
	from State
	step StepName
	// skip, when set, is asked before the step runs. Its zero route runs
	// the step; otherwise the incident goes to another step, a final
	// state (with the reason set), or another open state, whose row is
	// asked in turn.
	skip func(d *Doctor, inc *Incident, pol config.FsckPolicy) route
	run  func(d *Doctor, ctx context.Context, inc *Incident, s *Step, pol config.FsckPolicy) (Outcome, error)
	next map[Outcome]State
}

// route is where skip sends an incident instead of its row's step: to
// step, or to state.
type route struct {
	step  StepName
	state State
}

// pipeline is the error monitor's state machine, in the order a repair
// goes through it. Every open state has one row; StateFailing's row is
// the quarantine, which a state no row names gets too.
var pipeline = []stepSpec{
	{
		from: StateOpen, step: StepContainers,
		skip: func(d *Doctor, _ *Incident, _ config.FsckPolicy) route {
			if d.ctrs == nil {
				return route{state: StateLocated} // no containers to find
			}
			return route{}
		},
		run:  acts((*Doctor).locate),
		next: map[Outcome]State{OK: StateLocated, Failed: StateFailing},
	},
	{
		from: StateLocated, step: StepFreeze,
		skip: func(d *Doctor, inc *Incident, pol config.FsckPolicy) route {
			switch {
			case pol.Action == "notify":
				return route{state: StateReported}
			case inc.Layer:
				// A layer is shared by every container above it and
				// never written: freezing them all would stop far more
				// than the damage. It is checked and reported; see
				// docs/design.md.
				return route{step: StepCheck}
			case d.stoppedForRepair(inc, pol, true):
				// Nothing can write to it, so nothing needs freezing.
				return route{step: StepCheck}
			}
			return route{}
		},
		run: acts((*Doctor).freezeAll),
		// A container that cannot be frozen is stopped instead.
		next: map[Outcome]State{OK: StateFrozen, Failed: StateDamaged},
	},
	{
		from: StateFrozen, step: StepCheck,
		skip: func(_ *Doctor, inc *Incident, pol config.FsckPolicy) route {
			if pol.Action == "freeze" {
				inc.Reason = "fsck.action is freeze: the containers stay paused for an operator"
				return route{state: StateHeld}
			}
			return route{}
		},
		run: func(d *Doctor, ctx context.Context, inc *Incident, s *Step, pol config.FsckPolicy) (Outcome, error) {
			return d.check(ctx, inc, s, pol), nil // advice: it never fails
		},
		// The check is advice: only a clean one spares the repair.
		next: map[Outcome]State{Clean: StateClean, Damaged: StateDamaged, Inconclusive: StateDamaged, ReadOnly: StateDamaged, NotMounted: StateDamaged},
	},
	{
		from: StateClean, step: StepThaw,
		skip: reportLayer,
		run:  acts((*Doctor).thawAll),
		// A container that cannot be thawed is stopped, and the image
		// repaired and verified before it starts again.
		next: map[Outcome]State{OK: StateResolved, Failed: StateDamaged},
	},
	{
		from: StateDamaged, step: StepStop,
		skip: func(d *Doctor, inc *Incident, pol config.FsckPolicy) route {
			if r := reportLayer(d, inc, pol); r != (route{}) {
				return r
			}
			if pol.Action == "freeze" || pol.Action == "check" {
				inc.Reason = fmt.Sprintf("fsck.action is %s: the image needs a repair; the containers stay paused for an operator", pol.Action)
				return route{state: StateHeld}
			}
			if n := d.recentRepairs(inc, pol); pol.MaxRepairs > 0 && n >= pol.MaxRepairs {
				inc.Reason = fmt.Sprintf("%d repairs of this image in the last %s (fsck.max_repairs %d)", n, pol.RepairWindow, pol.MaxRepairs)
				return route{step: StepQuarantine}
			}
			return route{}
		},
		run:  acts((*Doctor).stopAll),
		next: map[Outcome]State{OK: StateStopped, Failed: StateFailing},
	},
	{
		from: StateStopped, step: StepRepair,
		run: func(d *Doctor, ctx context.Context, inc *Incident, s *Step, pol config.FsckPolicy) (Outcome, error) {
			return okOr(d.repair(ctx, inc, s, pol))
		},
		next: map[Outcome]State{OK: StateRepaired, Failed: StateFailing},
	},
	{
		from: StateRepaired, step: StepRestart,
		skip: func(_ *Doctor, inc *Incident, pol config.FsckPolicy) route {
			if !pol.Restart {
				inc.Reason = "fsck.restart is false: the containers stay stopped"
				return route{state: StateResolved}
			}
			return route{}
		},
		run: acts((*Doctor).restartAll),
		// The image is clean: a container that cannot start again is an
		// error of its own, recorded in the reason.
		next: map[Outcome]State{OK: StateResolved, Failed: StateResolved},
	},
	{
		from: StateFailing, step: StepQuarantine,
		run: acts((*Doctor).quarantine),
		// Final whatever happens: what could not be done is in the reason.
		next: map[Outcome]State{OK: StateQuarantined, Failed: StateQuarantined},
	},
}

// reportLayer ends the incident of a read-only layer, checked or not: the
// layer is marked damaged and its containers run on.
func reportLayer(d *Doctor, inc *Incident, _ config.FsckPolicy) route {
	if !inc.Layer {
		return route{}
	}
	d.markLayer(inc)
	return route{state: StateReported}
}

// acts is the run of a step that works or fails, whatever the policy.
func acts(work func(d *Doctor, ctx context.Context, inc *Incident, s *Step) error) func(*Doctor, context.Context, *Incident, *Step, config.FsckPolicy) (Outcome, error) {
	return func(d *Doctor, ctx context.Context, inc *Incident, s *Step, _ config.FsckPolicy) (Outcome, error) {
		return okOr(work(d, ctx, inc, s))
	}
}

// okOr is the outcome of a step that either works or fails.
func okOr(err error) (Outcome, error) {
	if err != nil {
		return Failed, err
	}
	return OK, nil
}

// rowFrom is the row of state s: the quarantine's for StateFailing and for
// a state no row names (readIncident refuses those): only a quarantine is
// safe then.
func rowFrom(s State) stepSpec {
	for _, r := range pipeline {
		if r.from == s {
			return r
		}
	}
	return rowOf(StepQuarantine)
}

// rowOf is the row of step.
func rowOf(step StepName) stepSpec {
	for _, r := range pipeline {
		if r.step == step {
			return r
		}
	}
	return stepSpec{step: step}
}

// next is the state after step ended with outcome out.
func next(step StepName, out Outcome) (State, error) {
	s, ok := rowOf(step).next[out]
	if !ok {
		return "", fmt.Errorf("no transition for step %s with outcome %s", step, out)
	}
	return s, nil
}

// plan returns the next step for the incident's state under pol, or the
// final state it ends in without one more step (setting the reason). An
// open state skip leads to is recorded as the incident's state.
func (d *Doctor) plan(inc *Incident, pol config.FsckPolicy) (step StepName, end State) {
	for range len(pipeline) + 1 { // each row once at most: no skip loops
		row := rowFrom(inc.State)
		if row.skip == nil {
			return row.step, ""
		}
		r := row.skip(d, inc, pol)
		switch {
		case r.step != "":
			return r.step, ""
		case r.state == "":
			return row.step, ""
		case Final(r.state):
			return "", r.state
		}
		inc.State = r.state
	}
	inc.Reason = joinDetail(inc.Reason, fmt.Sprintf("the pipeline found no step for state %s", inc.State))
	return StepQuarantine, ""
}

// do runs step's work. An error goes with the outcome Failed.
func (d *Doctor) do(ctx context.Context, inc *Incident, step StepName, s *Step, pol config.FsckPolicy) (Outcome, error) {
	row := rowOf(step)
	if row.run == nil {
		return Failed, fmt.Errorf("unknown step %q", step)
	}
	return row.run(d, ctx, inc, s, pol)
}
