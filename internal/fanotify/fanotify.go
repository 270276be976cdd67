// Package fanotify decodes what a fanotify group created with
// FAN_REPORT_FID reads back: events, each with its info records (file id
// with the filesystem's fsid, error). The error monitor (package fsck) and
// the window watcher's waker (package imagefs) both read such groups.
//
// Every length is checked against the buffer: the records come from the
// kernel, but a parser must not trust a length it has not bounded.
//
//	events, err := fanotify.Parse(buf[:n])
package fanotify

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Fsid is a filesystem id (__kernel_fsid_t), as statfs(2) reports it.
type Fsid [2]int32

func (f Fsid) String() string { return fmt.Sprintf("%08x:%08x", uint32(f[0]), uint32(f[1])) }

// Event is one event and the info records snug reads.
type Event struct {
	Mask uint64
	// HasFid reports a file id record: Fsid, HandleType and Handle.
	HasFid     bool
	Fsid       Fsid
	HandleType int32
	Handle     []byte
	// HasError reports an error record (FAN_FS_ERROR): Error, Count.
	HasError bool
	Error    int32
	Count    uint32
}

// Sizes of the records (include/uapi/linux/fanotify.h).
const (
	metadataSize   = 24 // struct fanotify_event_metadata
	infoHeaderSize = 4  // struct fanotify_event_info_header
	errorInfoSize  = infoHeaderSize + 8
	fidInfoMinSize = infoHeaderSize + 8 + 8 // header, fsid, file_handle's two fields
	// MaxHandleBytes bounds a file handle (MAX_HANDLE_SZ).
	MaxHandleBytes = 128
)

// ErrMalformed is returned for a buffer that is not a run of fanotify
// events as the kernel writes them.
var ErrMalformed = errors.New("malformed fanotify event")

// Parse decodes a buffer read from a fanotify descriptor. On a malformed
// record it returns the events before it and ErrMalformed.
func Parse(buf []byte) ([]Event, error) {
	var events []Event
	le := binary.LittleEndian
	for len(buf) > 0 {
		if len(buf) < metadataSize {
			return events, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(buf))
		}
		eventLen := le.Uint32(buf[0:])
		version := buf[4]
		metaLen := le.Uint16(buf[6:])
		switch {
		case version != unix.FANOTIFY_METADATA_VERSION:
			return events, fmt.Errorf("%w: version %d, want %d", ErrMalformed, version, unix.FANOTIFY_METADATA_VERSION)
		case metaLen < metadataSize || uint32(metaLen) > eventLen:
			return events, fmt.Errorf("%w: metadata length %d of event length %d", ErrMalformed, metaLen, eventLen)
		case uint64(eventLen) > uint64(len(buf)):
			return events, fmt.Errorf("%w: event length %d, %d bytes left", ErrMalformed, eventLen, len(buf))
		}
		ev, err := parseInfo(buf[metaLen:eventLen])
		if err != nil {
			return events, err
		}
		ev.Mask = le.Uint64(buf[8:])
		events = append(events, ev)
		buf = buf[eventLen:]
	}
	return events, nil
}

// parseInfo decodes the info records of one event.
func parseInfo(b []byte) (Event, error) {
	var ev Event
	le := binary.LittleEndian
	for len(b) > 0 {
		if len(b) < infoHeaderSize {
			return ev, fmt.Errorf("%w: %d bytes of info header", ErrMalformed, len(b))
		}
		typ, n := b[0], int(le.Uint16(b[2:]))
		if n < infoHeaderSize || n > len(b) {
			return ev, fmt.Errorf("%w: info record length %d, %d bytes left", ErrMalformed, n, len(b))
		}
		rec := b[:n]
		switch typ {
		case unix.FAN_EVENT_INFO_TYPE_ERROR:
			if n < errorInfoSize {
				return ev, fmt.Errorf("%w: error record of %d bytes", ErrMalformed, n)
			}
			ev.Error, ev.Count, ev.HasError = int32(le.Uint32(rec[4:])), le.Uint32(rec[8:]), true
		case unix.FAN_EVENT_INFO_TYPE_FID:
			if n < fidInfoMinSize {
				return ev, fmt.Errorf("%w: fid record of %d bytes", ErrMalformed, n)
			}
			ev.Fsid = Fsid{int32(le.Uint32(rec[4:])), int32(le.Uint32(rec[8:]))}
			hb := le.Uint32(rec[12:])
			ev.HandleType = int32(le.Uint32(rec[16:]))
			if hb > MaxHandleBytes || int(hb) > n-fidInfoMinSize {
				return ev, fmt.Errorf("%w: file handle of %d bytes in a %d-byte record", ErrMalformed, hb, n)
			}
			ev.Handle = append([]byte(nil), rec[fidInfoMinSize:fidInfoMinSize+int(hb)]...)
			ev.HasFid = true
		}
		b = b[n:]
	}
	return ev, nil
}
