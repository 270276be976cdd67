package imagefs

import (
	"context"
	"fmt"
	"strings"

	"github.com/snugfs/snug/api"
)

// FsckResult is the outcome of one e2fsck run (api.FsckResult).
type FsckResult = api.FsckResult

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
