package api

import "time"

// Stats describe an image: its size, its window, what it stores and what it
// costs the host.
type Stats struct {
	Path       string `json:"path"`
	UUID       string `json:"uuid"`
	Mounted    bool   `json:"mounted"`
	Device     string `json:"device,omitempty"`
	Mountpoint string `json:"mountpoint,omitempty"`

	// QuotaBytes is the most the container can store (with ext4's own
	// metadata); -1 when unknown (an image with errors is not mounted).
	QuotaBytes int64 `json:"quota_bytes"`
	// CeilingBytes is the filesystem size: the most the quota can be
	// raised to online.
	CeilingBytes int64 `json:"ceiling_bytes"`
	// WindowBytes is the end of the packing window: ext4 allocates below it.
	WindowBytes int64 `json:"window_bytes"`
	// UsedBytes is what df shows as used, less the balloon.
	UsedBytes int64 `json:"used_bytes"`
	// FreeBytes is the free space inside the window, available right now.
	FreeBytes int64 `json:"free_bytes"`
	// BalloonBytes is the free space held back beyond the window.
	BalloonBytes int64 `json:"balloon_bytes"`
	// FootprintBytes is what the image file costs the host (allocated bytes).
	FootprintBytes int64 `json:"footprint_bytes"`
	// Swell is FootprintBytes / UsedBytes (0 when nothing is used).
	Swell float64 `json:"swell"`

	InodesUsed  int64 `json:"inodes_used"`
	InodesTotal int64 `json:"inodes_total"`

	// Errors is ext4's error count (sysfs errors_count when mounted, the
	// superblock's otherwise).
	Errors int64 `json:"errors"`
	// ENOSPCRetriesExceeded counts allocations ext4 gave up on after its
	// retries (sysfs sra_exceeded_retry_limit, mounted images only): each
	// is an ENOSPC some writer saw. ext4 does not count an ENOSPC it
	// returns without retrying, so this is a lower bound.
	ENOSPCRetriesExceeded int64 `json:"enospc_retries_exceeded"`
	// Health is "ok", "errors" (ext4 recorded an error) or "needs_recovery"
	// (unmounted with a journal not yet replayed).
	Health     string   `json:"health"`
	FirstError *FsError `json:"first_error,omitempty"`
	LastError  *FsError `json:"last_error,omitempty"`
}

// FsError is one of the two error records ext4 keeps in its superblock.
type FsError struct {
	Time     time.Time
	Function string
	Line     uint32
	Inode    uint32
	Block    uint64
	// Code names the error ("EFSCORRUPTED", "EIO"), when ext4 recorded it.
	Code string `json:",omitempty"`
}

// ErrorRecord is ext4's live record of the errors a mounted filesystem
// found (sysfs). The kernel keeps it even when it cannot write the
// superblock, as after an I/O error.
type ErrorRecord struct {
	Count int64    `json:"count"`
	First *FsError `json:"first,omitempty"`
	Last  *FsError `json:"last,omitempty"`
}
