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
			out[i].IO, out[i].Commit = writePath(st.m)
		}
	}
	return out, nil
}

// writePath is how the image's writes reach the host, as the kernel says
// now: the loop device's mode ("direct" or "buffered") and the journal's
// commit mode ("ordered" or "async"); both "" when it cannot be read (the
// image is going away).
func writePath(m *imagefs.Mounted) (io, commit string) {
	wp, err := m.WritePath()
	if err != nil {
		return "", ""
	}
	io, commit = "buffered", "ordered"
	if wp.DirectIO {
		io = "direct"
	}
	if wp.AsyncCommit {
		commit = "async"
	}
	return io, commit
}
