package imagefs

import (
	"context"
	"fmt"
	"strings"
	"time"
)

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

// RepairMode selects how Repair runs e2fsck.
type RepairMode string

const (
	// RepairYes answers yes to every question (e2fsck -fy).
	RepairYes RepairMode = "yes"
	// RepairPreen fixes only what is safe without a human (e2fsck -fp) and
	// leaves the rest reported as uncorrected.
	RepairPreen RepairMode = "preen"
	// RepairFromBackup is RepairYes from the first backup superblock (e2fsck
	// -fy -b 32768 -B 4096): for a primary superblock e2fsck accepts but
	// cannot repair the image from. An image of one block group has no
	// backup; e2fsck then fails.
	RepairFromBackup RepairMode = "backup"
)

// backupSuperblock is the first backup superblock of a snug image: the
// start of block group 1 (4 KiB blocks, 32768 blocks per group).
const backupSuperblock = "32768"

// e2fsck runs e2fsck on an unmounted image and decodes the result. The
// returned error is set only when e2fsck could not run or failed as a tool;
// filesystem findings are in the result.
func e2fsck(ctx context.Context, path, mode string, args ...string) (FsckResult, error) {
	run, err := runTool(ctx, "e2fsck", append(args, path)...)
	res := FsckResult{Mode: mode, ExitCode: run.ExitCode, Output: strings.TrimSpace(run.Stdout + run.Stderr), Duration: run.Duration}
	if err != nil {
		return res, fmt.Errorf("%s %s: %w", mode, path, err)
	}
	if res.Failed() {
		return res, fmt.Errorf("%s %s: e2fsck: %w (exit %d): %s", mode, path, ErrToolFailed, run.ExitCode, lastLines(res.Output, 3))
	}
	return res, nil
}
