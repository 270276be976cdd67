// Package fsck will hold snug's error monitor (fanotify FAN_FS_ERROR), and
// the incident pipeline that freezes, checks, repairs and restarts the one
// container whose image failed. Today imagefs.Check and imagefs.Repair are
// the offline building blocks. Not built yet: see the error-monitor issue.
package fsck
