// Package errclass makes sentinel errors that belong to an errdefs class
// (github.com/containerd/errdefs): errdefs.IsNotFound and the like, and
// the gRPC mapping containerd applies to a snapshotter's errors
// (errgrpc.ToGRPC), see the class, while the message stays the
// sentinel's own.
package errclass

// New is a sentinel error with message msg in errdefs class class (for
// instance errdefs.ErrInvalidArgument).
func New(msg string, class error) error { return &classed{msg: msg, class: class} }

type classed struct {
	msg   string
	class error
}

func (e *classed) Error() string { return e.msg }

// Unwrap makes errors.Is(err, class) true, which is how errdefs asks.
func (e *classed) Unwrap() error { return e.class }
