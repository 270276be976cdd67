// Package plugin registers snug as a containerd built-in snapshotter
// plugin, for a custom containerd build that links it in:
//
//	import _ "github.com/snugfs/snug/snapshotter/plugin"
//
// and in containerd's config:
//
//	[plugins."io.containerd.snapshotter.v1.snug"]
//	  config_path = "/etc/snug/config.toml"
//
// The supported path is the proxy plugin served by `snug serve`, which needs
// no containerd rebuild and restarts independently of containerd; see the
// README. As a built-in, snug's state defaults to containerd's plugin root
// (/var/lib/containerd/io.containerd.snapshotter.v1.snug) unless the policy
// file sets root.
package plugin

import (
	"errors"
	"fmt"

	"github.com/BurntSushi/toml"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/platforms"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/snapshotter"
)

// Config is the plugin's section of containerd's config.
type Config struct {
	// ConfigPath is snug's policy file (default /etc/snug/config.toml).
	ConfigPath string `toml:"config_path"`
}

func init() {
	registry.Register(&plugin.Registration{
		Type:   plugins.SnapshotPlugin,
		ID:     "snug",
		Config: &Config{},
		InitFn: initSnapshotter,
	})
}

func initSnapshotter(ic *plugin.InitContext) (any, error) {
	ic.Meta.Platforms = append(ic.Meta.Platforms, platforms.DefaultSpec())
	pc, ok := ic.Config.(*Config)
	if !ok {
		return nil, errors.New("snug: invalid plugin configuration")
	}
	path := pc.ConfigPath
	if path == "" {
		path = config.DefaultPath
	}
	cfg, err := config.Load(path)
	if err != nil {
		return nil, fmt.Errorf("snug: %w", err)
	}
	if !rootIsSet(path) {
		cfg.Root = ic.Properties[plugins.PropertyRootDir]
	}
	ic.Meta.Exports[plugins.SnapshotterRootDir] = cfg.Root
	return snapshotter.New(ic.Context, cfg)
}

// rootIsSet reports whether the policy file sets root itself.
func rootIsSet(path string) bool {
	var raw struct {
		Root *string `toml:"root"`
	}
	_, err := toml.DecodeFile(path, &raw)
	return err == nil && raw.Root != nil
}
