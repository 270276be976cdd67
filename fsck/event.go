package fsck

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
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
type Fsid [2]int32

func (f Fsid) String() string { return fmt.Sprintf("%08x:%08x", uint32(f[0]), uint32(f[1])) }

// Sizes of the records fanotify writes (include/uapi/linux/fanotify.h).
const (
	metadataSize   = 24 // struct fanotify_event_metadata
	infoHeaderSize = 4  // struct fanotify_event_info_header
	errorInfoSize  = infoHeaderSize + 8
	fidInfoMinSize = infoHeaderSize + 8 + 8 // header, fsid, file_handle's two fields
	// maxHandleBytes bounds a file handle (MAX_HANDLE_SZ).
	maxHandleBytes = 128
)

// errMalformed is returned for a buffer that is not a run of fanotify
// events as the kernel writes them.
var errMalformed = errors.New("malformed fanotify event")

// parseEvents decodes a buffer read from a fanotify descriptor. It returns
// the FAN_FS_ERROR events; other events (none are asked for) are skipped.
// Every length is checked against the buffer: the records come from the
// kernel, but a parser must not trust a length it has not bounded.
func parseEvents(buf []byte) ([]Event, error) {
	var events []Event
	le := binary.LittleEndian
	for len(buf) > 0 {
		if len(buf) < metadataSize {
			return events, fmt.Errorf("%w: %d trailing bytes", errMalformed, len(buf))
		}
		eventLen := le.Uint32(buf[0:])
		version := buf[4]
		metaLen := le.Uint16(buf[6:])
		mask := le.Uint64(buf[8:])
		switch {
		case version != unix.FANOTIFY_METADATA_VERSION:
			return events, fmt.Errorf("%w: version %d, want %d", errMalformed, version, unix.FANOTIFY_METADATA_VERSION)
		case metaLen < metadataSize || uint32(metaLen) > eventLen:
			return events, fmt.Errorf("%w: metadata length %d of event length %d", errMalformed, metaLen, eventLen)
		case uint64(eventLen) > uint64(len(buf)):
			return events, fmt.Errorf("%w: event length %d, %d bytes left", errMalformed, eventLen, len(buf))
		}
		if mask&unix.FAN_FS_ERROR != 0 {
			ev, err := parseInfo(buf[metaLen:eventLen])
			if err != nil {
				return events, err
			}
			events = append(events, ev)
		}
		buf = buf[eventLen:]
	}
	return events, nil
}

// parseInfo decodes the info records of one FAN_FS_ERROR event.
func parseInfo(b []byte) (Event, error) {
	var ev Event
	var haveError, haveFid bool
	le := binary.LittleEndian
	for len(b) > 0 {
		if len(b) < infoHeaderSize {
			return ev, fmt.Errorf("%w: %d bytes of info header", errMalformed, len(b))
		}
		typ, n := b[0], int(le.Uint16(b[2:]))
		if n < infoHeaderSize || n > len(b) {
			return ev, fmt.Errorf("%w: info record length %d, %d bytes left", errMalformed, n, len(b))
		}
		rec := b[:n]
		switch typ {
		case unix.FAN_EVENT_INFO_TYPE_ERROR:
			if n < errorInfoSize {
				return ev, fmt.Errorf("%w: error record of %d bytes", errMalformed, n)
			}
			ev.Error = int32(le.Uint32(rec[4:]))
			ev.Count = le.Uint32(rec[8:])
			haveError = true
		case unix.FAN_EVENT_INFO_TYPE_FID:
			if n < fidInfoMinSize {
				return ev, fmt.Errorf("%w: fid record of %d bytes", errMalformed, n)
			}
			ev.Fsid = Fsid{int32(le.Uint32(rec[4:])), int32(le.Uint32(rec[8:]))}
			hb := le.Uint32(rec[12:])
			ev.HandleType = int32(le.Uint32(rec[16:]))
			if hb > maxHandleBytes || int(hb) > n-fidInfoMinSize {
				return ev, fmt.Errorf("%w: file handle of %d bytes in a %d-byte record", errMalformed, hb, n)
			}
			ev.Handle = append([]byte(nil), rec[fidInfoMinSize:fidInfoMinSize+int(hb)]...)
			haveFid = true
		}
		b = b[n:]
	}
	if !haveError || !haveFid {
		return ev, fmt.Errorf("%w: FAN_FS_ERROR without its error and fid records", errMalformed)
	}
	return ev, nil
}
