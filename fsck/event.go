package fsck

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/internal/fanotify"
)

// Event is one fanotify FAN_FS_ERROR event: a filesystem reported errors.
// The kernel merges the errors of one filesystem into one pending event, so
// Count may be more than one.
type Event struct {
	// Fsid is the filesystem's id, as statfs(2) reports it for its mount.
	Fsid Fsid
	// Error is the first error's errno: 117 (EUCLEAN) for corruption, 5
	// (EIO) for an I/O error.
	Error int32
	// Count is how many errors the event stands for.
	Count uint32
	// HandleType is the file handle's type; 255 (FILEID_INVALID) means
	// the whole filesystem rather than one inode. The handle itself is
	// never resolved: open_by_handle_at would read the damaged inode again,
	// raise another error and feed an event storm.
	HandleType int32
	// Handle is the raw file handle, kept for the record.
	Handle []byte
}

// Fsid is a filesystem id (__kernel_fsid_t).
type Fsid = fanotify.Fsid

// maxHandleBytes bounds a file handle (MAX_HANDLE_SZ).
const maxHandleBytes = fanotify.MaxHandleBytes

// errMalformed is returned for a buffer that is not a run of fanotify
// events as the kernel writes them.
var errMalformed = fanotify.ErrMalformed

// parseEvents decodes a buffer read from the monitor's fanotify group. It
// returns the FAN_FS_ERROR events; other events (none are asked for) are
// skipped.
func parseEvents(buf []byte) ([]Event, error) {
	all, err := fanotify.Parse(buf)
	var events []Event
	for _, ev := range all {
		if ev.Mask&unix.FAN_FS_ERROR == 0 {
			continue
		}
		if !ev.HasError || !ev.HasFid {
			return events, fmt.Errorf("%w: FAN_FS_ERROR without its error and fid records", errMalformed)
		}
		events = append(events, Event{Fsid: ev.Fsid, Error: ev.Error, Count: ev.Count, HandleType: ev.HandleType, Handle: ev.Handle})
	}
	return events, err
}
