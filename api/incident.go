package api

import "time"

// Incident is one error on one image and what snug did about it. It is
// written to disk before each step, so a restarted daemon resumes it.
type Incident struct {
	ID       string `json:"id"`
	Snapshot string `json:"snapshot"`
	// Layer reports a committed (read-only, shared) layer image.
	Layer bool   `json:"layer,omitempty"`
	Image string `json:"image"`
	// Source is how the error was noticed: "fanotify", "sysfs",
	// "existing" (carried by the image when snug started watching it),
	// "check" (an online check found damage), "mount" (start-up could not
	// mount the image) or "start-check" (start-up's e2fsck -fn of an
	// unmounted image found damage; see fsck.check_at_start).
	Source string `json:"source"`
	// Error names the first error ("EUCLEAN", "EIO").
	Error string `json:"error,omitempty"`
	// Errors counts the errors reported while the incident was open.
	Errors     uint64         `json:"errors"`
	DetectedAt time.Time      `json:"detected_at"`
	Detail     *ErrorRecord   `json:"detail,omitempty"`
	Containers []ContainerRef `json:"containers,omitempty"`
	State      IncidentState  `json:"state"`
	// Reason says why an incident was quarantined, held or failed a step.
	Reason string `json:"reason,omitempty"`
	Steps  []Step `json:"steps"`
	// Check and Repair keep e2fsck's reports.
	Check  *ScrubResult `json:"check,omitempty"`
	Repair *FsckResult  `json:"repair,omitempty"`
	// Verify is the e2fsck -fn after the repair.
	Verify    *FsckResult `json:"verify,omitempty"`
	UpdatedAt time.Time   `json:"updated_at"`
}

// ContainerRef is a container using an incident's image, and what the
// pipeline did to it.
type ContainerRef struct {
	Namespace string `json:"namespace"`
	ID        string `json:"id"`
	// Status is the task's status when the incident found it ("running",
	// "paused", "stopped", "" for no task).
	Status string `json:"status"`
	// Stdout, Stderr, Terminal are the task's stdio as containerd knew it
	// when it was stopped, for its restart.
	Stdout    string `json:"stdout,omitempty"`
	Stderr    string `json:"stderr,omitempty"`
	Terminal  bool   `json:"terminal,omitempty"`
	Paused    bool   `json:"paused,omitempty"`
	Stopped   bool   `json:"stopped,omitempty"`
	Restarted bool   `json:"restarted,omitempty"`
	// Log is where its output goes after a restart, when its stdio was a
	// client's FIFOs that are gone.
	Log string `json:"log,omitempty"`
	// ManagedBy names the manager that restarts the container itself
	// ("kubernetes" for a CRI container): snug repairs its image and
	// leaves the restart to it.
	ManagedBy string `json:"managed_by,omitempty"`
	// ShimPID is the stopped task's shim, moved into the repair's CPU
	// cgroup for the stop; ShimCgroup is the CPU cgroup it was in, where
	// the new task's shim goes once the task runs again.
	ShimPID    int    `json:"shim_pid,omitempty"`
	ShimCgroup string `json:"shim_cgroup,omitempty"`
}

// Step is one step of the pipeline.
type Step struct {
	Name   StepName  `json:"name"`
	Start  time.Time `json:"start"`
	End    time.Time `json:"end,omitzero"`
	Result string    `json:"result,omitempty"`
	Detail string    `json:"detail,omitempty"`
}

// Duration is how long the step took (zero while it runs).
func (s Step) Duration() time.Duration {
	if s.End.IsZero() {
		return 0
	}
	return s.End.Sub(s.Start)
}

// Done reports whether the incident went through step name to the end.
func (inc *Incident) Done(name StepName) bool {
	for _, s := range inc.Steps {
		if s.Name == name && !s.End.IsZero() {
			return true
		}
	}
	return false
}

// IncidentState is where an incident stands. Each step of the pipeline
// ends with an outcome, and its row of the error monitor's table
// (fsck/table.go) gives the state that follows: no step can leave an
// incident in a state package fsck does not name.
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
type IncidentState string

func (s IncidentState) String() string { return string(s) }

// StepName names a step of the pipeline, as recorded in an incident.
// detect is the report itself; the final states are recorded as steps of
// their own too.
type StepName string

func (s StepName) String() string { return string(s) }

// CheckResult is the outcome of an on-demand online check.
type CheckResult struct {
	Snapshot string      `json:"snapshot"`
	Result   ScrubResult `json:"result"`
	// Incident is the incident a damaged image opened.
	Incident string `json:"incident,omitempty"`
}
