package hooks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/internal/errclass"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/snugfs/snug/control/wire"
)

// Stages snug has a hook for.
const (
	StageCreateRuntime = "createRuntime"
	StagePrestart      = "prestart"
	StagePoststop      = "poststop"
)

// Timeout bounds one hook call to the daemon. A prestart grow takes well
// under a millisecond; this only matters when the daemon hangs.
const Timeout = 5 * time.Second

// Result is what a hook did, for its one line of output.
type Result struct {
	Stage     string
	Container string
	Image     string // the snapshot id; "" when the container is not on snug
	Class     string
	FreeBytes int64
	// Warning is set when the hook could not do its job but let the
	// container go on (the daemon is down or failed).
	Warning error
}

// ErrUnknownStage is returned for a stage snug has no hook for.
var ErrUnknownStage = errclass.New("unknown hook stage", errdefs.ErrInvalidArgument)

// Hook runs the hook for stage: it reads the OCI state from stdin and tells
// the daemon through client. Only bad input is an error (ErrBadState,
// ErrUnknownStage); a daemon that is down or fails is a Result.Warning, so
// the container's start or stop never waits on snug.
func Hook(ctx context.Context, stage string, stdin io.Reader, client *wire.Client) (Result, error) {
	res := Result{Stage: stage}
	var call func(context.Context, wire.Container) (wire.ContainerImage, error)
	switch stage {
	case StageCreateRuntime, StagePrestart:
		call = client.ContainerStarting
	case StagePoststop:
		call = client.ContainerStopped
	default:
		return res, fmt.Errorf("%w %q: want %s, %s or %s", ErrUnknownStage, stage, StageCreateRuntime, StagePrestart, StagePoststop)
	}
	st, err := ReadState(stdin)
	if err != nil {
		return res, err
	}
	res.Container = st.ID
	out, err := tell(ctx, call, StateContainer(st))
	res.Image, res.Class, res.FreeBytes = out.ID, out.Class, out.FreeBytes
	if err != nil {
		res.Warning = err
	}
	return res, nil
}

// StateContainer is what a hook tells the daemon of the container whose
// OCI state is st: its id, and its rootfs and annotations from the state
// and the bundle's config.json.
func StateContainer(st specs.State) wire.Container {
	rootfs, annotations := rootfsOf(st)
	return wire.Container{ID: st.ID, RootFS: rootfs, Annotations: annotations}
}

// tell makes one hook call to the daemon, bounded by Timeout.
func tell(ctx context.Context, call func(context.Context, wire.Container) (wire.ContainerImage, error), c wire.Container) (wire.ContainerImage, error) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	return call(ctx, c)
}

// Exit codes of a hook command.
const (
	ExitOK    = 0 // done, or skipped with a warning: the container goes on
	ExitFail  = 1
	ExitUsage = 2 // bad input: not an OCI state, or an unknown stage
)

// Main is a hook command (`snug hook STAGE`, `snug-hook hook STAGE`): it
// runs Hook against the control socket at address and reports on stderr.
// policyErr is the policy file's error, if it could not be read: the hook
// then goes on with address (the default socket) and says so.
func Main(ctx context.Context, stage, address string, policyErr error, stdin io.Reader, stderr io.Writer) int {
	if policyErr != nil {
		fmt.Fprintf(stderr, "snug hook %s: warning: %v; using the default control socket\n", stage, policyErr)
	}
	res, err := Hook(ctx, stage, stdin, wire.NewClient(address))
	if err != nil {
		fmt.Fprintf(stderr, "snug hook %s: %v\n", stage, err)
		if errors.Is(err, ErrBadState) || errors.Is(err, ErrUnknownStage) {
			return ExitUsage
		}
		return ExitFail
	}
	if res.Warning != nil {
		fmt.Fprintf(stderr, "snug hook %s: container %s: warning: %v (the container goes on without it)\n", stage, res.Container, res.Warning)
	}
	return ExitOK
}
