package fsck

import "github.com/snugfs/snug/api"

// State is where an incident stands (api.IncidentState).
type State = api.IncidentState

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

// StepName names a step of the pipeline (api.StepName).
type StepName = api.StepName

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
