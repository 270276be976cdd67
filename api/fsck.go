package api

import "time"

// FsckResult is the outcome of one e2fsck run, decoded from its exit status
// (see e2fsck(8), "EXIT CODE": the bits are or-ed together).
type FsckResult struct {
	Mode     string        `json:"mode"` // "check", "repair" or "preen"
	ExitCode int           `json:"exit_code"`
	Output   string        `json:"output"`
	Duration time.Duration `json:"duration_ns"`
}

// e2fsck exit status bits.
const (
	fsckCorrected   = 1   // filesystem errors corrected
	fsckReboot      = 2   // corrected, system should be rebooted
	fsckUncorrected = 4   // filesystem errors left uncorrected
	fsckOperational = 8   // operational error
	fsckUsage       = 16  // usage or syntax error
	fsckCancelled   = 32  // cancelled by user request
	fsckLibrary     = 128 // shared library error
)

// Clean reports whether e2fsck found nothing wrong.
func (r FsckResult) Clean() bool { return r.ExitCode == 0 }

// Corrected reports whether e2fsck fixed errors.
func (r FsckResult) Corrected() bool { return r.ExitCode&(fsckCorrected|fsckReboot) != 0 }

// Uncorrected reports whether errors remain in the filesystem: found by a
// read-only check, or beyond what a repair could fix.
func (r FsckResult) Uncorrected() bool { return r.ExitCode&fsckUncorrected != 0 }

// Failed reports whether e2fsck itself failed (operational or usage error,
// cancelled, library error), so it says nothing about the filesystem.
func (r FsckResult) Failed() bool {
	return r.ExitCode&(fsckOperational|fsckUsage|fsckCancelled|fsckLibrary) != 0
}

// Status summarises the result in one word: "clean", "repaired", "errors"
// or "failed".
func (r FsckResult) Status() string {
	switch {
	case r.Failed():
		return "failed"
	case r.Uncorrected():
		return "errors"
	case r.Corrected():
		return "repaired"
	default:
		return "clean"
	}
}

// ScrubResult is an online check of a mounted image.
type ScrubResult struct {
	FsckResult
	// Method is how the consistent view was taken.
	Method string `json:"method"`
	// Frozen is how long writers were held by the freeze.
	Frozen time.Duration `json:"frozen_ns"`
	// JournalSkipped reports a read-only view whose journal held
	// transactions e2fsck could not replay (an image ext4 stopped after an
	// error): its findings may include what the journal would have fixed.
	JournalSkipped bool `json:"journal_skipped,omitempty"`
}
