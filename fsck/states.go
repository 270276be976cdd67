package fsck

// State is where an incident stands. Each step of the pipeline ends with
// an Outcome, and its row of the table pipeline (steps.go) gives the state
// that follows: no step can leave an incident in a state this file does
// not name.
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

func (s State) String() string { return string(s) }

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

// StepName names a step of the pipeline, as recorded in an incident.
// detect is the report itself; the final states are recorded as steps of
// their own too.
type StepName string

func (s StepName) String() string { return string(s) }

// Steps of the pipeline, in the order a repair goes through them.
const (
	StepDetect     StepName = "detect"
	StepContainers StepName = "containers"
	StepFreeze     StepName = "freeze"
	StepCheck      StepName = "check"
	StepThaw       StepName = "thaw"
	StepStop       StepName = "stop"
	StepRepair     StepName = "repair"
	StepRestart    StepName = "restart"
	StepQuarantine StepName = "quarantine"
)

// Outcome is how a step ended.
type Outcome string

func (o Outcome) String() string { return string(o) }

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

// upgradeState maps the states of records an older snug wrote to the ones
// of this table, so an incident it left open resumes: "checked" did not
// say how the check ended, so the check runs again.
func upgradeState(s State) State {
	if s == "checked" {
		return StateFrozen
	}
	return s
}
