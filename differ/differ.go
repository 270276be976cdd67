// Package differ is snug's containerd differ (a diff "applier"): it writes
// an image layer straight from its tar into the snapshot's read-only ext4
// layer image, in one pass (imagefs.LayerFromTar), instead of unpacking it
// through the snapshot's mounted rw image and converting that at Commit.
// `snug serve` serves it next to the snapshotter, on the same socket, as
// containerd's diff API; containerd uses it as a proxy plugin named in the
// unpack configuration (README). Whatever the snapshotter does not take
// (snug.Snapshotter.LayerTarget: anything but a layer's extraction) is
// applied the usual way, by containerd's own file-system applier, so the
// differ can serve every unpack into snug; so is a layer the one-pass
// writer refuses (a file listed twice in one tar: containerd's applier
// keeps the last). It compares nothing: Diff is
// answered "not implemented", and containerd's walking differ makes diffs.
package differ

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/snugfs/snug/imagefs"
)

// Targets says where a layer applied onto mounts goes
// (snapshotter.Snapshotter.LayerTarget); errdefs.ErrNotImplemented means
// apply it onto the mounts.
type Targets interface {
	LayerTarget(ctx context.Context, mounts []mount.Mount) (string, error)
}

// Differ applies layers for snug's snapshots.
type Differ struct {
	targets Targets
	store   func() (content.Store, error) // containerd's content store
	counts  struct{ tar, mounts, refused atomic.Int64 }
}

// Counts is how the layers the differ applied since it started went.
type Counts struct {
	FromTar       int64 // written from their tar into a layer image
	ThroughMounts int64 // not a layer's extraction: applied onto the mounts
	Refused       int64 // refused by the one-pass writer, then applied onto the mounts
}

// Counts reports how the layers applied so far went.
func (d *Differ) Counts() Counts {
	return Counts{FromTar: d.counts.tar.Load(), ThroughMounts: d.counts.mounts.Load(), Refused: d.counts.refused.Load()}
}

// New returns a differ that reads layers from the content store store
// returns (containerd's, over its API) and asks targets where they go.
func New(targets Targets, store func() (content.Store, error)) *Differ {
	return &Differ{targets: targets, store: store}
}

// Apply applies the layer desc onto mounts and returns the descriptor of
// the uncompressed layer (its digest is the layer's diff ID, which the
// unpacker checks).
func (d *Differ) Apply(ctx context.Context, desc ocispec.Descriptor, mounts []mount.Mount, opts ...diff.ApplyOpt) (ocispec.Descriptor, error) {
	store, err := d.store()
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("apply %s: %w", desc.Digest, err)
	}
	target, err := d.targets.LayerTarget(ctx, mounts)
	if errdefs.IsNotImplemented(err) {
		log.G(ctx).WithError(err).WithField("digest", desc.Digest).Debug("applying through the mounts")
		return throughMounts(ctx, store, &d.counts.mounts, desc, mounts, opts)
	}
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("apply %s: %w", desc.Digest, err)
	}
	if _, err := images.DiffCompression(ctx, desc.MediaType); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("apply %s: media type %s: %w", desc.Digest, desc.MediaType, errdefs.ErrNotImplemented)
	}
	var config diff.ApplyConfig
	for _, o := range opts {
		if err := o(ctx, desc, &config); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("apply %s: %w", desc.Digest, err)
		}
	}
	start := time.Now()
	ra, err := store.ReaderAt(ctx, desc)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("apply %s: %w", desc.Digest, err)
	}
	defer ra.Close()
	// containerd's content store is remote: each read is a round trip, so
	// read the blob in large pieces (the decompressor asks for 32 KiB).
	blob := bufio.NewReaderSize(content.NewReader(ra), blobReadSize)
	processor := diff.NewProcessorChain(desc.MediaType, blob)
	for processor.MediaType() != ocispec.MediaTypeImageLayer {
		if processor, err = diff.GetProcessor(ctx, processor, config.ProcessorPayloads); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("apply %s: media type %s: %w", desc.Digest, desc.MediaType, err)
		}
	}
	defer processor.Close()
	// Decompressing and hashing (the diff ID) run ahead of writing the
	// image, beside it: on two CPUs the writer's time is the layer's.
	digester := digest.Canonical.Digester()
	tarball := newReadAhead(processor, digester.Hash())
	layer, err := imagefs.LayerFromTar(ctx, tarball, target)
	if err == nil {
		// The digest covers the whole stream, padding after the tar included.
		_, err = io.Copy(io.Discard, tarball)
	}
	size, rerr := tarball.Close()
	if err == nil && rerr != nil {
		err = rerr
	}
	if err != nil {
		os.Remove(target) // a layer whose stream failed after it was written
		if ctx.Err() != nil {
			return ocispec.Descriptor{}, fmt.Errorf("apply %s: %w", desc.Digest, err)
		}
		// What the writer cannot make (a file listed twice in one tar,
		// say), containerd's applier may: it reads the blob again.
		log.G(ctx).WithError(err).WithField("digest", desc.Digest).Warn("layer not written from its tar; applying it through the mounts")
		return throughMounts(ctx, store, &d.counts.refused, desc, mounts, opts)
	}
	d.counts.tar.Add(1)
	log.G(ctx).WithFields(log.Fields{"digest": desc.Digest, "layer": layer.Bytes, "files": layer.Inodes,
		"took": time.Since(start)}).Debug("layer written from its tar")
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Size: size, Digest: digester.Digest()}, nil
}

// blobReadSize is how much of a layer's blob one read from the content
// store asks for.
const blobReadSize = 4 << 20

// throughMounts applies desc onto mounts with containerd's file-system
// applier (it reads the blob from store itself), counting it in n.
func throughMounts(ctx context.Context, store content.Store, n *atomic.Int64, desc ocispec.Descriptor, mounts []mount.Mount, opts []diff.ApplyOpt) (ocispec.Descriptor, error) {
	applied, err := apply.NewFileSystemApplier(store).Apply(ctx, desc, mounts, opts...)
	if err == nil {
		n.Add(1)
	}
	return applied, err
}

// Register serves the differ as containerd's diff API on rpc.
func (d *Differ) Register(rpc *grpc.Server) { diffapi.RegisterDiffServer(rpc, server{d: d}) }

// server is the diff API over a Differ.
type server struct {
	diffapi.UnimplementedDiffServer
	d *Differ
}

func (s server) Apply(ctx context.Context, req *diffapi.ApplyRequest) (*diffapi.ApplyResponse, error) {
	ctx, err := withNamespace(ctx)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	var opts []diff.ApplyOpt
	if len(req.Payloads) > 0 {
		payloads := make(map[string]typeurl.Any, len(req.Payloads))
		for k, v := range req.Payloads {
			payloads[k] = v
		}
		opts = append(opts, diff.WithPayloads(payloads))
	}
	opts = append(opts, diff.WithSyncFs(req.SyncFs))
	desc, err := s.d.Apply(ctx, oci.DescriptorFromProto(req.Diff), mount.FromProto(req.Mounts), opts...)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &diffapi.ApplyResponse{Applied: oci.DescriptorToProto(desc)}, nil
}

func (server) Diff(context.Context, *diffapi.DiffRequest) (*diffapi.DiffResponse, error) {
	return nil, errgrpc.ToGRPC(fmt.Errorf("snug's differ makes no diffs: %w", errdefs.ErrNotImplemented))
}

// withNamespace carries the containerd namespace of the request (the
// header containerd sends) into ctx, for the content store.
func withNamespace(ctx context.Context) (context.Context, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if ns := md.Get(namespaces.GRPCHeader); len(ns) > 0 && ns[0] != "" {
		return namespaces.WithNamespace(ctx, ns[0]), nil
	}
	return ctx, fmt.Errorf("apply: the request names no containerd namespace: %w", errdefs.ErrInvalidArgument)
}
