// Package config reads snug's policy file, a TOML document at
// /etc/snug/config.toml by default.
//
// Every key has a default, so snug runs with no file at all. Decoding is
// strict: an unknown key, a value of the wrong type or a value out of range is
// an error that names the key and its line, and nothing of a bad file is used.
//
//	cfg, err := config.Load("/etc/snug/config.toml")
//	if err != nil { ... } // e.g. `line 7: window.headroom: invalid size "lots"`
//
// The main type is [Config]; [Default] returns the built-in policy.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/internal/errclass"

	"github.com/BurntSushi/toml"
)

// DefaultPath is where snug looks for its policy file.
const DefaultPath = "/etc/snug/config.toml"

// Config is snug's whole policy. Field comments are the reference the README
// repeats; keep them in step.
type Config struct {
	// Root is the state directory: images, metadata, mount points.
	Root string `toml:"root"`
	// Address is the Unix socket of the containerd snapshotter (proxy plugin).
	Address string `toml:"address"`
	// ControlAddress is the Unix socket of snug's own control API.
	ControlAddress string `toml:"control_address"`
	// MetricsAddress is where Prometheus metrics are served over HTTP, as
	// host:port (e.g. "127.0.0.1:9477"); empty turns them off.
	MetricsAddress string `toml:"metrics_address"`
	// ContainerdAddress is containerd's socket. snug follows its task exit
	// events, so a container whose poststop hook did not run is still
	// reclaimed when it stops; empty turns this off.
	ContainerdAddress string `toml:"containerd_address"`
	// E2fsprogsDir is where mkfs.ext4, e2fsck and resize2fs are taken from;
	// empty looks them up in PATH, then /usr/sbin and /sbin.
	E2fsprogsDir string `toml:"e2fsprogs_dir"`

	Image   ImagePolicy   `toml:"image"`
	Window  WindowPolicy  `toml:"window"`
	Reclaim ReclaimPolicy `toml:"reclaim"`
	Fsck    FsckPolicy    `toml:"fsck"`
	Pool    PoolPolicy    `toml:"pool"`

	// Classes are named overrides of [window], [reclaim] and image.direct_io,
	// from [policies.NAME] tables; a container picks one with the snapshot
	// label LabelClass or the OCI annotation AnnotationClass.
	Classes map[string]Class `toml:"-"`
}

// Class is a named policy: the [window] and [reclaim] keys and the
// image.direct_io a [policies.NAME] table sets, over the file's own.
type Class struct {
	Window  WindowPolicy  `toml:"window"`
	Reclaim ReclaimPolicy `toml:"reclaim"`
	Image   ClassImage    `toml:"image"`
}

// ClassImage is what a class may change of [image]: how the loop device
// reaches the image file, which can change while the image is mounted (a
// class an OCI annotation picks is known only once the container's image
// is mounted), and the journal's commit mode and online discard, mount
// options, which a class gets on the images mounted for it: those of
// snapshots labelled with it (known at Prepare, before the mount), and
// every image of it that start-up mounts again. The other [image] keys are
// fixed when an image is made.
type ClassImage struct {
	// DirectIO is ImagePolicy.DirectIO for the class's images.
	DirectIO bool `toml:"direct_io"`
	// AsyncCommit is ImagePolicy.AsyncCommit for the class's images.
	AsyncCommit bool `toml:"async_commit"`
	// Discard is ImagePolicy.Discard for the class's images, also a mount
	// option: with AsyncCommit, it keeps a freed block's old contents out
	// of the files written without fsync that a host crash leaves.
	Discard bool `toml:"discard"`
}

// How a container picks a policy class.
const (
	// LabelClass is the snapshot label (`ctr run --snapshotter-label`).
	LabelClass = "containerd.io/snapshot/snug.policy"
	// AnnotationClass is the OCI annotation (a Kubernetes pod or container
	// annotation, passed on by containerd's pod_annotations setting).
	AnnotationClass = "io.snugfs.policy"
)

// Base is the class of a container that picks none: [window], [reclaim],
// image.direct_io, image.async_commit and image.discard.
func (c Config) Base() Class {
	return Class{Window: c.Window, Reclaim: c.Reclaim, Image: ClassImage{
		DirectIO: c.Image.DirectIO, AsyncCommit: c.Image.AsyncCommit, Discard: c.Image.Discard}}
}

// Class returns the named class, or Base for "" . ok is false for a name the
// policy does not define (the caller then uses Base and says so).
func (c Config) Class(name string) (cl Class, ok bool) {
	if name == "" {
		return c.Base(), true
	}
	cl, ok = c.Classes[name]
	if !ok {
		return c.Base(), false
	}
	return cl, true
}

// ImagePolicy shapes new thin images and how they are attached.
type ImagePolicy struct {
	// Quota is the most a container can store: the quota of a new image
	// when its snapshot has no max-size label.
	Quota Size `toml:"quota"`
	// MaxQuota is the ceiling of a new image: its filesystem's size, and
	// the most its quota can be raised to while it runs (snug resize). It
	// costs a fresh image little host space and e2fsck little time (see
	// docs/benchmarks.md, TestCeilingBenchmark); 0 means the quota itself
	// (no raise beyond it).
	MaxQuota Size `toml:"max_quota"`
	// JournalSize is the ext4 journal of a new image. Every journal block is
	// written sooner or later, so it is a fixed cost on the host.
	JournalSize Size `toml:"journal_size"`
	// BytesPerInode sets a new image's inode count: one inode per this many
	// bytes of its quota when it is made (the ceiling adds none).
	BytesPerInode Size `toml:"bytes_per_inode"`
	// Inodes is a new image's inode count: the most files, directories and
	// symlinks its container can make. 0 derives it from BytesPerInode.
	// The label containerd.io/snapshot/snug.inodes overrides it.
	Inodes int64 `toml:"inodes"`
	// DirectIO attaches loop devices with direct I/O, so image data is not
	// cached twice (in the container's and in the host's page cache).
	DirectIO bool `toml:"direct_io"`
	// Discard mounts images with ext4's online discard, so freed blocks turn
	// into holes in the image file shortly after each journal commit.
	Discard bool `toml:"discard"`
	// FastCommit makes new images with ext4's fast commits (mkfs.ext4 -O
	// fast_commit): an fsync logs the file's change in one block of the
	// journal's fast-commit area instead of committing a whole jbd2
	// transaction. Durability is the same (the block is written with a cache
	// flush before and after it, and replayed at mount or by e2fsck).
	FastCommit bool `toml:"fast_commit"`
	// AsyncCommit mounts images with data=writeback,journal_async_commit:
	// a journal commit is written with its checksum and one cache flush
	// after it, instead of a flush before the commit block and one after
	// it (a loop device has no FUA), so an fsync costs one flush of the
	// image file instead of two. An fsync'd write is as durable (the
	// checksum lets replay tell a commit the crash cut short). What a host
	// crash can lose besides: data written without fsync. ext4 refuses the
	// async commit in data=ordered mode, and in writeback mode a file's new
	// blocks can reach the journal before its data, so after a host crash a
	// file written shortly before it (and not fsync'd) may hold what its
	// blocks held before: the container's own deleted data, or zeros.
	AsyncCommit bool `toml:"async_commit"`
}

// WindowPolicy sizes the packing window: the front part of an image where
// ext4 may allocate. Everything beyond it is held by the balloon.
type WindowPolicy struct {
	// Initial is the window of a new image.
	Initial Size `toml:"initial"`
	// Headroom is the free space kept available inside the window; the window
	// grows when less is left and shrinks back to it on reclaim.
	Headroom Size `toml:"headroom"`
	// HeadroomRatio raises the headroom to this fraction of the used space
	// when that is larger than Headroom.
	HeadroomRatio float64 `toml:"headroom_ratio"`
	// CheckInterval is how often every mounted image's free window is
	// checked (one statfs each). It is global: a class cannot change it.
	CheckInterval time.Duration `toml:"check_interval"`
	// Burst raises the headroom to what the fastest recent writer could
	// write in this long, so a burst at page-cache speed finds room.
	Burst time.Duration `toml:"burst"`
}

// ReclaimPolicy says when a container's image gives space back to the host.
type ReclaimPolicy struct {
	// OnStop trims and repacks an image when its container stops.
	OnStop bool `toml:"on_stop"`
	// IdleAfter reclaims an image whose used space has not changed for this
	// long ("0s" turns it off). A running container's image is repacked
	// with a margin of one headroom, so it never sees ENOSPC meanwhile.
	IdleAfter time.Duration `toml:"idle_after"`
	// MinGain skips an idle repack that would give back less than this.
	MinGain Size `toml:"min_gain"`
	// TrimAfter trims a running container's image once its file holds this
	// much more beyond the data than after the last trim ("0" turns it
	// off): freed blocks become holes in the image file, so the footprint
	// follows deletions.
	TrimAfter Size `toml:"trim_after"`
}

// PoolPolicy sizes the pool of ready-made rw images that Prepare takes
// from instead of making one on `ctr run`'s critical path. Between Min and
// Max the pool follows demand: it holds as many images as Prepares took
// within the busiest few seconds of the last minutes, and shrinks back when
// that burst is forgotten. Min = Max fixes its size. Each waiting image
// costs about 1 MiB of host disk.
type PoolPolicy struct {
	// Min is how many images the pool always holds ready.
	Min int `toml:"min"`
	// Max is the most it holds after a burst of Prepares.
	Max int `toml:"max"`
	// Premount keeps the pool's images attached to a loop device and
	// mounted (detached, in no mount table) with their headroom free, so
	// that Prepare moves a mount instead of attaching and mounting. Each
	// waiting image then also holds a loop device and a mounted ext4.
	Premount bool `toml:"premount"`
}

// MaxPool bounds PoolPolicy.Max.
const MaxPool = 1024

// FsckPolicy says how images are checked and repaired.
type FsckPolicy struct {
	// Repair is how e2fsck repairs: "yes" (-y, fix everything) or "preen"
	// (-p, fix only what is safe without a human, fail otherwise).
	Repair string `toml:"repair"`
	// Timeout bounds one e2fsck run.
	Timeout time.Duration `toml:"timeout"`

	// Action is how far snug goes when ext4 reports an error in a
	// container's image: "notify" (record the incident, publish it),
	// "freeze" (also pause the containers on the image), "check" (also
	// run e2fsck -fn on the frozen image; the containers stay paused if
	// the image is damaged) or "repair" (also stop them, repair the
	// image offline and start them again).
	Action string `toml:"action"`
	// Restart starts a repaired container's task again with its spec and
	// its log; false leaves it stopped.
	Restart bool `toml:"restart"`
	// MaxRepairs bounds the repairs of one image within RepairWindow;
	// beyond it the image is quarantined (kept, its container stopped) for
	// an operator: an image that keeps breaking has a cause to find. 0
	// means no bound.
	MaxRepairs   int           `toml:"max_repairs"`
	RepairWindow time.Duration `toml:"repair_window"`
	// Monitor is how errors are noticed: "auto" (fanotify FAN_FS_ERROR,
	// sysfs where the kernel lacks it), "fanotify" or "sysfs".
	Monitor string `toml:"monitor"`
	// CheckMethod is how an online check gets a consistent view of a
	// running image: "auto" (reflink where the host filesystem clones
	// files, else frozen), "reflink" or "frozen" (held frozen during
	// e2fsck -fn).
	CheckMethod string `toml:"check_method"`
	// ScrubInterval checks every mounted image online this often ("0s"
	// turns it off; e2scrub_all runs weekly, "168h").
	ScrubInterval time.Duration `toml:"scrub_interval"`
	// CheckAtStart runs e2fsck -fn on every writable image start-up has to
	// mount (after a host reboot, all of them) before it is mounted; a
	// damaged one is repaired first. ext4 notices damage only where it
	// reads: this finds what happened while no kernel had the image.
	CheckAtStart bool `toml:"check_at_start"`
}

// Default returns the built-in policy, used for every key a file leaves out.
func Default() Config {
	return Config{
		Root:              "/var/lib/snug",
		Address:           "/run/snug/snapshotter.sock",
		ControlAddress:    "/run/snug/control.sock",
		ContainerdAddress: "/run/containerd/containerd.sock",
		Image: ImagePolicy{
			Quota:         10 * GiB,
			MaxQuota:      32 * GiB,
			JournalSize:   4 * MiB,
			BytesPerInode: 16 * KiB,
			DirectIO:      true,
			Discard:       false,
			FastCommit:    false,
		},
		Window: WindowPolicy{
			Initial:       256 * MiB,
			Headroom:      256 * MiB,
			HeadroomRatio: 0.10,
			CheckInterval: 100 * time.Millisecond,
			Burst:         500 * time.Millisecond,
		},
		Reclaim: ReclaimPolicy{
			OnStop:    true,
			IdleAfter: 10 * time.Minute,
			MinGain:   16 * MiB,
			TrimAfter: 16 * MiB,
		},
		Fsck: FsckPolicy{
			Repair:       "yes",
			Timeout:      10 * time.Minute,
			Action:       "repair",
			Restart:      true,
			MaxRepairs:   3,
			RepairWindow: time.Hour,
			Monitor:      "auto",
			CheckMethod:  "auto",
			CheckAtStart: true,
		},
		Pool: PoolPolicy{Min: 2, Max: 64, Premount: true},
	}
}

// ErrInvalid is returned when a policy file cannot be used: bad syntax, an
// unknown key, a wrong type or a value out of range.
var ErrInvalid = errclass.New("invalid policy", errdefs.ErrInvalidArgument)

// Load reads the policy at path over the defaults. A missing file at the
// default path is not an error (snug runs on defaults); a missing file that
// was named explicitly is.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && path == DefaultPath {
		return Default(), nil
	}
	if err != nil {
		return Config{}, fmt.Errorf("read policy: %w", err)
	}
	cfg, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes a policy document over the defaults and validates it.
func Parse(data []byte) (Config, error) {
	doc := document{Config: Default()}
	md, err := toml.Decode(string(data), &doc)
	if err != nil {
		return Config{}, decodeError(err)
	}
	cfg := doc.Config
	for name, prim := range doc.Policies {
		cl := cfg.Base()
		if err := md.PrimitiveDecode(prim, &cl); err != nil {
			return Config{}, decodeError(err)
		}
		if cfg.Classes == nil {
			cfg.Classes = map[string]Class{}
		}
		cfg.Classes[name] = cl
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		k := undecoded[0]
		if len(k) == 4 && k[0] == "policies" && k[2] == "image" {
			return Config{}, fmt.Errorf("%w: %sunknown key %q: a class sets only direct_io, async_commit and discard of [image] (the others are fixed when an image is made)",
				ErrInvalid, linePrefix(data, k.String()), k.String())
		}
		return Config{}, fmt.Errorf("%w: %sunknown key %q", ErrInvalid, linePrefix(data, k.String()), k.String())
	}
	if err := cfg.validate(); err != nil {
		var fe fieldError
		if errors.As(err, &fe) {
			return Config{}, fmt.Errorf("%w: %s%s: %s", ErrInvalid, linePrefix(data, fe.key), fe.key, fe.msg)
		}
		return Config{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return cfg, nil
}

// decodeError names the line and key of a TOML decoding error.
func decodeError(err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		if pe.LastKey != "" {
			return fmt.Errorf("%w: line %d: %s: %s", ErrInvalid, pe.Position.Line, pe.LastKey, pe.Message)
		}
		return fmt.Errorf("%w: line %d: %s", ErrInvalid, pe.Position.Line, pe.Message)
	}
	return fmt.Errorf("%w: %w", ErrInvalid, err)
}

// document is the policy file's shape: the Config, and the [policies.NAME]
// tables decoded over it once it is known.
type document struct {
	Config
	Policies map[string]toml.Primitive `toml:"policies"`
}

func linePrefix(data []byte, key string) string {
	if n := keyLine(data, key); n > 0 {
		return fmt.Sprintf("line %d: ", n)
	}
	return ""
}
