package fsck

import "fmt"

// State is where an incident stands. Each step of the pipeline ends with
// an Outcome, and the table transitions gives the state that follows: no
// step can leave an incident in a state this file does not name.
//
// An incident ends in one of four final states:
//   - resolved: the image is clean (checked clean, or repaired and verified)
//     and its containers run again (or stay stopped by fsck.restart = false);
//   - quarantined: its containers' tasks are stopped (never left paused),
//     the image is unmounted and kept, marked with the reason, and snug
//     refuses to mount it until an operator deals with it;
//   - reported: fsck.action is notify, or the image is a read-only layer
//     (its containers run on; the layer is marked damaged);
//   - held: fsck.action is freeze or check, and the containers stay paused
//     for an operator.
type State string

// Incident states: the open ones in the order a repair goes through them,
// then the final ones.
const (
	// StateOpen: reported, nothing done yet.
	StateOpen State = "open"
	// StateLocated: the containers on the image are known.
	StateLocated State = "located"
	// StateFrozen: they are paused.
	StateFrozen State = "frozen"
	// StateClean: the online check found the image clean.
	StateClean State = "clean"
	// StateDamaged: the image needs an offline repair: the check found
	// damage, could not finish (it is advice, never the verdict), found
	// the filesystem stopped read-only, or could not run at all.
	StateDamaged State = "damaged"
	// StateStopped: the containers' tasks are stopped and deleted.
	StateStopped State = "stopped"
	// StateRepaired: e2fsck repaired the image and a second, read-only
	// e2fsck found it clean; it is mounted again.
	StateRepaired State = "repaired"
	// StateFailing: a step failed in a way only a quarantine answers.
	StateFailing State = "failing"

	StateResolved    State = "resolved"
	StateQuarantined State = "quarantined"
	StateReported    State = "reported"
	StateHeld        State = "held"
)

// States lists every state, open ones first.
var States = []State{StateOpen, StateLocated, StateFrozen, StateClean, StateDamaged, StateStopped,
	StateRepaired, StateFailing, StateResolved, StateQuarantined, StateReported, StateHeld}

// Final reports whether an incident in state s needs nothing more.
func Final(s State) bool {
	switch s {
	case StateResolved, StateQuarantined, StateReported, StateHeld:
		return true
	}
	return false
}

// Steps of the pipeline, as recorded in an incident. detect is the report
// itself; the final states are recorded as steps of their own too.
const (
	StepDetect     = "detect"
	StepContainers = "containers"
	StepFreeze     = "freeze"
	StepCheck      = "check"
	StepThaw       = "thaw"
	StepStop       = "stop"
	StepRepair     = "repair"
	StepRestart    = "restart"
	StepQuarantine = "quarantine"
)

// Outcome is how a step ended.
type Outcome string

const (
	OK     Outcome = "ok"
	Failed Outcome = "failed"
	// Outcomes of the check.
	Clean        Outcome = "clean"
	Damaged      Outcome = "damaged"
	Inconclusive Outcome = "inconclusive" // e2fsck -n could not finish: exit 8 or 12, a timeout, a crash
	ReadOnly     Outcome = "read-only"    // clean, but ext4 stopped the filesystem: it must be remounted
	NotMounted   Outcome = "not-mounted"  // nothing to check online (start-up could not mount it)
)

// transitions is the state after each step's outcome.
var transitions = map[string]map[Outcome]State{
	StepContainers: {OK: StateLocated, Failed: StateFailing},
	// A container that cannot be frozen is stopped instead.
	StepFreeze: {OK: StateFrozen, Failed: StateDamaged},
	// The check is advice: only a clean one spares the repair.
	StepCheck: {Clean: StateClean, Damaged: StateDamaged, Inconclusive: StateDamaged, ReadOnly: StateDamaged, NotMounted: StateDamaged},
	// A container that cannot be thawed is stopped, and the image
	// repaired and verified before it starts again.
	StepThaw:   {OK: StateResolved, Failed: StateDamaged},
	StepStop:   {OK: StateStopped, Failed: StateFailing},
	StepRepair: {OK: StateRepaired, Failed: StateFailing},
	// The image is clean: a container that cannot start again is an error
	// of its own, recorded in the reason.
	StepRestart: {OK: StateResolved, Failed: StateResolved},
	// Final whatever happens: what could not be done is in the reason.
	StepQuarantine: {OK: StateQuarantined, Failed: StateQuarantined},
}

// next is the state after step ended with outcome out.
func next(step string, out Outcome) (State, error) {
	s, ok := transitions[step][out]
	if !ok {
		return "", fmt.Errorf("no transition for step %s with outcome %s", step, out)
	}
	return s, nil
}

// upgradeState maps the states of records an older snug wrote to the ones
// of this table, so an incident it left open resumes: "checked" did not
// say how the check ended, so the check runs again.
func upgradeState(s State) State {
	if s == "checked" {
		return StateFrozen
	}
	return s
}
