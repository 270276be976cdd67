package api

import "time"

// QuotaChange says what SetQuota did.
type QuotaChange struct {
	QuotaBefore   int64 `json:"quota_before_bytes"`
	QuotaAfter    int64 `json:"quota_after_bytes"`
	CeilingBytes  int64 `json:"ceiling_bytes"`
	UsedBytes     int64 `json:"used_bytes"`
	BalloonBefore int64 `json:"balloon_before_bytes"`
	BalloonAfter  int64 `json:"balloon_after_bytes"`
}

// ReclaimResult says what a Reclaim did.
type ReclaimResult struct {
	TrimmedBytes    int64         `json:"trimmed_bytes"`
	FootprintBefore int64         `json:"footprint_before_bytes"`
	FootprintAfter  int64         `json:"footprint_after_bytes"`
	WindowBefore    int64         `json:"window_before_bytes"`
	WindowAfter     int64         `json:"window_after_bytes"`
	Duration        time.Duration `json:"duration_ns"`
}

// Gain is the host space the reclaim gave back.
func (r ReclaimResult) Gain() int64 { return r.FootprintBefore - r.FootprintAfter }

// ImageStatus is one snapshot's image as `snug status` shows it.
type ImageStatus struct {
	// Snapshot is the snapshot's key or name in snug's store (containerd
	// prefixes it with the namespace and its own id).
	Snapshot string `json:"snapshot"`
	// Kind is "active" (a thin writable image) or "committed" (a layer).
	Kind string `json:"kind"`
	ID   string `json:"id"`
	Stats
	// Problem says why the image could not be measured, if it could not.
	Problem string `json:"problem,omitempty"`
	// Damaged is why the error monitor marked a read-only layer damaged.
	Damaged string `json:"damaged,omitempty"`
	Activity
}

// Activity is what the daemon did to an rw image and knows of its
// container, since the daemon started.
type Activity struct {
	// Class is the policy class the image follows ("" for the base).
	Class     string `json:"class,omitempty"`
	Container string `json:"container,omitempty"`
	// State is "running" or "stopped" when a hook or an event said so.
	State string `json:"state,omitempty"`
	// IO is how its loop device reaches the image file: "direct" (around
	// the host's page cache) or "buffered" (image.direct_io, per class).
	IO string `json:"io,omitempty"`
	// Commit is how its journal commits: "ordered" (a cache flush before
	// and after each commit block) or "async" (data=writeback,
	// journal_async_commit: image.async_commit, per class).
	Commit      string     `json:"commit,omitempty"`
	LastGrow    *time.Time `json:"last_grow,omitempty"`
	LastReclaim *time.Time `json:"last_reclaim,omitempty"`
	WindowCounts
}

// WindowCounts count what the daemon did to an image's window, or to all
// images' (the daemon's totals).
type WindowCounts struct {
	Grows          int64 `json:"grows"`
	GrowBytes      int64 `json:"grow_bytes"`
	Reclaims       int64 `json:"reclaims"`
	ReclaimedBytes int64 `json:"reclaimed_bytes"`
	TrimmedBytes   int64 `json:"trimmed_bytes"`
	// WindowFull counts checks that found the window full before the quota.
	WindowFull int64 `json:"window_full"`
	// ReclaimsSkipped counts the reclaims at a stop that found the image
	// packed already, and did nothing.
	ReclaimsSkipped int64 `json:"reclaims_skipped"`
	// FlushesDropped counts the checks that found the image's loop device
	// dropping cache flushes (set to write through while mounted).
	FlushesDropped int64 `json:"flushes_dropped"`
}

// ReclaimOutcome is what one reclaim did, or why it did nothing.
type ReclaimOutcome struct {
	Snapshot string `json:"snapshot"`
	ID       string `json:"id"`
	Reason   string `json:"reason"`
	// Skipped says why nothing was done ("" when the image was repacked).
	Skipped string `json:"skipped,omitempty"`
	ReclaimResult
}

// QuotaOutcome is what a quota change did.
type QuotaOutcome struct {
	Snapshot string `json:"snapshot,omitempty"`
	ID       string `json:"id"`
	QuotaChange
}
