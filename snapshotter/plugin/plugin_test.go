package plugin

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"

	"github.com/snugfs/snug/internal/roottest"
)

// TestRegisteredAndInitialises finds snug in containerd's plugin registry
// and initialises it the way containerd does: root from containerd's
// plugin root, policy from the configured file; the result is a working
// snapshotter.
func TestRegisteredAndInitialises(t *testing.T) {
	roottest.Require(t, "mkfs.ext4")
	var reg *plugin.Registration
	for _, r := range registry.Graph(func(*plugin.Registration) bool { return false }) {
		if r.Type == plugins.SnapshotPlugin && r.ID == "snug" {
			reg = &r
		}
	}
	if reg == nil {
		t.Fatal("snug is not registered as a snapshotter plugin")
	}
	dir := roottest.TempDir(t)
	policy := filepath.Join(dir, "snug.toml")
	if err := os.WriteFile(policy, []byte("[image]\nquota = \"64MiB\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "plugin-root")
	ic := plugin.NewContext(context.Background(), plugin.NewPluginSet(), map[string]string{plugins.PropertyRootDir: root})
	ic.Config = &Config{ConfigPath: policy}
	p := reg.Init(ic)
	inst, err := p.Instance()
	if err != nil {
		t.Fatal(err)
	}
	sn := inst.(snapshots.Snapshotter)
	defer sn.Close()
	if got := ic.Meta.Exports[plugins.SnapshotterRootDir]; got != root {
		t.Errorf("exported root %q, want %q", got, root)
	}
	ctx := context.Background()
	if _, err := sn.Prepare(ctx, "k", ""); err != nil {
		t.Fatal(err)
	}
	u, err := sn.Usage(ctx, "k")
	if err != nil || u.Size <= 0 {
		t.Fatalf("usage %+v %v", u, err)
	}
	if err := sn.Remove(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "metadata.db")); err != nil {
		t.Errorf("state not under containerd's plugin root: %v", err)
	}
}
