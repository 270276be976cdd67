package fsck

import (
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// Sizes of the records (include/uapi/linux/fanotify.h), to build them.
const (
	metadataSize   = 24
	infoHeaderSize = 4
	errorInfoSize  = infoHeaderSize + 8
	fidInfoMinSize = infoHeaderSize + 8 + 8
)

// record builds one FAN_FS_ERROR event as the kernel lays it out.
func record(errno int32, count uint32, fsid Fsid, handleType int32, handle []byte) []byte {
	le := binary.LittleEndian
	errInfo := make([]byte, errorInfoSize)
	errInfo[0] = unix.FAN_EVENT_INFO_TYPE_ERROR
	le.PutUint16(errInfo[2:], errorInfoSize)
	le.PutUint32(errInfo[4:], uint32(errno))
	le.PutUint32(errInfo[8:], count)
	fid := make([]byte, fidInfoMinSize+len(handle))
	fid[0] = unix.FAN_EVENT_INFO_TYPE_FID
	le.PutUint16(fid[2:], uint16(len(fid)))
	le.PutUint32(fid[4:], uint32(fsid[0]))
	le.PutUint32(fid[8:], uint32(fsid[1]))
	le.PutUint32(fid[12:], uint32(len(handle)))
	le.PutUint32(fid[16:], uint32(handleType))
	copy(fid[fidInfoMinSize:], handle)
	meta := make([]byte, metadataSize)
	total := metadataSize + len(errInfo) + len(fid)
	le.PutUint32(meta[0:], uint32(total))
	meta[4] = unix.FANOTIFY_METADATA_VERSION
	le.PutUint16(meta[6:], metadataSize)
	le.PutUint64(meta[8:], unix.FAN_FS_ERROR)
	le.PutUint32(meta[16:], ^uint32(0)) // fd: FAN_NOFD
	out := append(meta, errInfo...)
	return append(out, fid...)
}

func TestParseEvents(t *testing.T) {
	one := record(117, 3, Fsid{0x1234, -7}, 1, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	two := append(append([]byte{}, one...), record(5, 1, Fsid{9, 9}, fileIDInvalid, nil)...)
	cut := func(b []byte, n int) []byte { return append([]byte{}, b[:len(b)-n]...) }
	patch := func(b []byte, off int, v byte) []byte {
		c := append([]byte{}, b...)
		c[off] = v
		return c
	}
	for _, tc := range []struct {
		name  string
		buf   []byte
		want  []Event
		fails bool
	}{
		{name: "one", buf: one, want: []Event{{Fsid: Fsid{0x1234, -7}, Error: 117, Count: 3, HandleType: 1, Handle: []byte{1, 2, 3, 4, 5, 6, 7, 8}}}},
		{name: "two", buf: two, want: []Event{
			{Fsid: Fsid{0x1234, -7}, Error: 117, Count: 3, HandleType: 1, Handle: []byte{1, 2, 3, 4, 5, 6, 7, 8}},
			{Fsid: Fsid{9, 9}, Error: 5, Count: 1, HandleType: fileIDInvalid, Handle: []byte{}},
		}},
		{name: "empty", buf: nil},
		{name: "truncated metadata", buf: one[:10], fails: true},
		{name: "truncated event", buf: cut(one, 3), fails: true},
		{name: "wrong version", buf: patch(one, 4, 2), fails: true},
		{name: "metadata length too small", buf: patch(one, 6, 8), fails: true},
		{name: "info length zero", buf: patch(patch(one, metadataSize+2, 0), metadataSize+3, 0), fails: true},
		{name: "handle longer than record", buf: patch(one, metadataSize+errorInfoSize+12, 200), fails: true},
		{name: "no error record", buf: patch(one, metadataSize, 9), fails: true},
		{name: "other event skipped", buf: patch(one, 9, 0) /* mask 0x8000 -> 0 */},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseEvents(tc.buf)
			if tc.fails {
				if !errors.Is(err, errMalformed) {
					t.Fatalf("got %v, %v; want errMalformed", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d events %+v, want %d", len(got), got, len(tc.want))
			}
			for i := range got {
				g, w := got[i], tc.want[i]
				if g.Fsid != w.Fsid || g.Error != w.Error || g.Count != w.Count || g.HandleType != w.HandleType || string(g.Handle) != string(w.Handle) {
					t.Errorf("event %d: got %+v, want %+v", i, g, w)
				}
			}
		})
	}
}

// FuzzParseEvents feeds arbitrary bytes to the event parser: it must never
// panic nor read past the buffer, and whatever it accepts must carry its
// bounded handle.
func FuzzParseEvents(f *testing.F) {
	f.Add(record(117, 1, Fsid{1, 2}, 1, []byte{1, 2, 3, 4, 5, 6, 7, 8}))
	f.Add(record(5, 203, Fsid{-1, 0}, fileIDInvalid, nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		events, err := parseEvents(b)
		if err != nil && !errors.Is(err, errMalformed) {
			t.Fatalf("error not errMalformed: %v", err)
		}
		for _, ev := range events {
			if len(ev.Handle) > maxHandleBytes {
				t.Fatalf("handle of %d bytes", len(ev.Handle))
			}
		}
	})
}
