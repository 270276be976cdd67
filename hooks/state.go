package hooks

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/internal/errclass"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ErrBadState is returned for hook input that is not an OCI state.
var ErrBadState = errclass.New("bad OCI state on stdin", errdefs.ErrInvalidArgument)

// maxState bounds what a hook reads from stdin: a state is a few hundred
// bytes, its annotations a few KiB.
const maxState = 1 << 20

// ReadState decodes the OCI state a runtime gives a hook on stdin. It needs
// an id and an absolute bundle path; anything else is ErrBadState.
func ReadState(r io.Reader) (specs.State, error) {
	var st specs.State
	data, err := io.ReadAll(io.LimitReader(r, maxState+1))
	if err != nil {
		return st, fmt.Errorf("%w: %w", ErrBadState, err)
	}
	if len(data) > maxState {
		return st, fmt.Errorf("%w: more than %d bytes", ErrBadState, maxState)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("%w: %w", ErrBadState, err)
	}
	switch {
	case st.ID == "":
		return st, fmt.Errorf("%w: no container id", ErrBadState)
	case !filepath.IsAbs(st.Bundle):
		return st, fmt.Errorf("%w: bundle %q is not an absolute path", ErrBadState, st.Bundle)
	}
	return st, nil
}

// bundleSpec is the part of a bundle's config.json a hook needs.
type bundleSpec struct {
	Root        *specs.Root       `json:"root"`
	Annotations map[string]string `json:"annotations"`
}

// maxConfig bounds what is read of a bundle's config.json.
const maxConfig = 64 << 20

// readConfig reads a bundle's config.json, at most maxConfig bytes.
func readConfig(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxConfig))
}

// rootfsOf is the host path of a container's root filesystem: config.json's
// root.path, relative to the bundle unless absolute; bundle/rootfs when the
// file cannot be read (the hook still tries: the daemon also knows the
// container by id). Annotations come from the state, or config.json.
func rootfsOf(st specs.State) (rootfs string, annotations map[string]string) {
	data, _ := readConfig(filepath.Join(st.Bundle, "config.json"))
	return rootfsIn(st, data)
}

// rootfsIn is rootfsOf with the bundle's config.json already read (nil if
// it could not be).
func rootfsIn(st specs.State, config []byte) (rootfs string, annotations map[string]string) {
	rootfs = filepath.Join(st.Bundle, "rootfs")
	annotations = st.Annotations
	var spec bundleSpec
	if config == nil || json.NewDecoder(bytes.NewReader(config)).Decode(&spec) != nil {
		return rootfs, annotations
	}
	if spec.Root != nil && spec.Root.Path != "" {
		rootfs = spec.Root.Path
		if !filepath.IsAbs(rootfs) {
			rootfs = filepath.Join(st.Bundle, rootfs)
		}
	}
	if annotations == nil {
		annotations = spec.Annotations
	}
	return rootfs, annotations
}
