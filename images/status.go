package images

import (
	"context"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/imagefs"
)

// ImageStatus is one snapshot's image as `snug status` shows it (api.ImageStatus).
type ImageStatus = api.ImageStatus

// Status describes the image of every active and committed snapshot, in
// snapshot id order, as the snapshotter describes it (Snapshots.Describe),
// with what the daemon did to each rw image in service.
func (g *Manager) Status(ctx context.Context) ([]ImageStatus, error) {
	out, err := g.snaps.Describe(ctx)
	if err != nil {
		return nil, err
	}
	for i := range out {
		if st := g.image(out[i].ID); st != nil {
			out[i].Activity = st.activity()
			out[i].IO = ioMode(st.m)
			out[i].Commit = commitMode(st.m)
		}
	}
	return out, nil
}

// ioMode is how the image's loop device reaches its file, as the kernel
// says now ("" when it cannot be read: the image is going away).
func ioMode(m *imagefs.Mounted) string {
	on, err := m.DirectIO()
	switch {
	case err != nil:
		return ""
	case on:
		return "direct"
	}
	return "buffered"
}

// commitMode is how the image's journal commits, as its ext4 says now (""
// when it cannot be read: the image is going away).
func commitMode(m *imagefs.Mounted) string {
	async, err := m.AsyncCommit()
	switch {
	case err != nil:
		return ""
	case async:
		return "async"
	}
	return "ordered"
}
