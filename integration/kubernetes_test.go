package integration

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
	"go.yaml.in/yaml/v3"

	"github.com/snugfs/snug/config"
)

// TestKubernetesManifests checks the files contrib/kubernetes gives a
// cluster against each other and against what they configure (no cluster
// runs here): containerd loads the drop-in and finds snug's socket there;
// snug loads the node policy; the DaemonSet runs snug in the node's mount
// namespace, privileged, from the paths its install step fills with what
// the Dockerfile puts in the image.
func TestKubernetesManifests(t *testing.T) {
	dir := repoPath("contrib/kubernetes")
	cfg, err := config.Load(dir + "/config.toml")
	if err != nil {
		t.Fatalf("snug policy: %v", err)
	}

	// containerd's own loader: version 3, the proxy plugin at snug's address.
	var ctrd srvconfig.Config
	if err := srvconfig.LoadConfig(context.Background(), dir+"/containerd-snug.toml", &ctrd); err != nil {
		t.Fatalf("containerd drop-in: %v", err)
	}
	if p := ctrd.ProxyPlugins["snug"]; p.Type != "snapshot" || p.Address != cfg.Address {
		t.Errorf("drop-in proxy plugin %+v; snug serves %s", p, cfg.Address)
	}
	var dropIn struct {
		Plugins map[string]struct {
			Snapshotter string `toml:"snapshotter"`
			Containerd  struct {
				Runtimes map[string]struct {
					ContainerAnnotations []string `toml:"container_annotations"`
					PodAnnotations       []string `toml:"pod_annotations"`
					Options              struct {
						BinaryName string `toml:"BinaryName"`
					} `toml:"options"`
				} `toml:"runtimes"`
			} `toml:"containerd"`
		} `toml:"plugins"`
	}
	if _, err := toml.DecodeFile(dir+"/containerd-snug.toml", &dropIn); err != nil {
		t.Fatal(err)
	}
	if sn := dropIn.Plugins["io.containerd.cri.v1.images"].Snapshotter; sn != "snug" {
		t.Errorf("CRI's snapshotter is %q", sn)
	}
	runc := dropIn.Plugins["io.containerd.cri.v1.runtime"].Containerd.Runtimes["runc"]
	for _, want := range []string{"io.snugfs.*", "containerd.io/snapshot/max-size"} {
		if !slices.Contains(runc.ContainerAnnotations, want) || !slices.Contains(runc.PodAnnotations, want) {
			t.Errorf("annotation %s not passed to the OCI spec: %+v", want, runc)
		}
	}

	// The DaemonSet.
	raw, err := os.ReadFile(dir + "/snug-daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	type container struct {
		Name            string   `yaml:"name"`
		Image           string   `yaml:"image"`
		Command         []string `yaml:"command"`
		SecurityContext struct {
			Privileged bool `yaml:"privileged"`
		} `yaml:"securityContext"`
		VolumeMounts []struct {
			Name      string `yaml:"name"`
			MountPath string `yaml:"mountPath"`
		} `yaml:"volumeMounts"`
	}
	type doc struct {
		Kind string `yaml:"kind"`
		Spec struct {
			Template struct {
				Spec struct {
					HostPID        bool        `yaml:"hostPID"`
					InitContainers []container `yaml:"initContainers"`
					Containers     []container `yaml:"containers"`
					Volumes        []struct {
						Name     string `yaml:"name"`
						HostPath struct {
							Path string `yaml:"path"`
						} `yaml:"hostPath"`
					} `yaml:"volumes"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	var ds *doc
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	for {
		var d doc
		if err := dec.Decode(&d); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("snug-daemonset.yaml: %v", err)
		}
		if d.Kind == "DaemonSet" {
			ds = &d
		}
	}
	if ds == nil {
		t.Fatal("snug-daemonset.yaml has no DaemonSet")
	}
	pod := ds.Spec.Template.Spec
	if !pod.HostPID || len(pod.Containers) != 1 || len(pod.InitContainers) != 1 {
		t.Fatalf("pod spec: hostPID %t, %d containers, %d init containers", pod.HostPID, len(pod.Containers), len(pod.InitContainers))
	}
	snug := pod.Containers[0]
	serve := strings.Join(snug.Command, " ")
	if !snug.SecurityContext.Privileged || !strings.HasPrefix(serve, "nsenter --target=1 --mount -- ") ||
		!strings.HasSuffix(serve, "/opt/snug/bin/snug serve --config /etc/snug/config.toml") {
		t.Errorf("snug container: privileged %t, command %q", snug.SecurityContext.Privileged, serve)
	}
	install := pod.InitContainers[0]
	script := strings.Join(install.Command, " ")
	hostPaths := map[string]string{}
	for _, v := range pod.Volumes {
		hostPaths[v.Name] = v.HostPath.Path
	}
	// reaches says whether the install step writes the node's path p
	// through one of its volumes, at /host/p.
	reaches := func(p string) bool {
		for _, m := range install.VolumeMounts {
			if rest, ok := strings.CutPrefix("/host"+p, m.MountPath); ok && (rest == "" || rest[0] == '/') && hostPaths[m.Name]+rest == p {
				return true
			}
		}
		return false
	}
	dockerfile, err := os.ReadFile(dir + "/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ inImage, onNode string }{
		{"/snug/bin/snug", "/opt/snug/bin"},
		{"/snug/bin/snug-hook", "/opt/snug/bin"},
		{"/snug/bin/snug-runc", "/opt/snug/bin"},
		{"/snug/config.toml", "/etc/snug"},
		{"/snug/containerd-snug.toml", "/etc/containerd/conf.d"},
	} {
		if !strings.Contains(script, tc.inImage) {
			t.Errorf("the install step does not copy %s", tc.inImage)
		}
		if !reaches(tc.onNode) {
			t.Errorf("the install step has no volume for the node's %s", tc.onNode)
		}
		base := tc.inImage[strings.LastIndex(tc.inImage, "/")+1:]
		if !strings.Contains(string(dockerfile), base) {
			t.Errorf("the Dockerfile does not put %s in the image", base)
		}
	}
	if runc.Options.BinaryName != "/opt/snug/bin/snug-runc" {
		t.Errorf("the drop-in's runc is %q, the install step puts snug-runc in /opt/snug/bin", runc.Options.BinaryName)
	}
	for _, p := range []string{cfg.Root, "/run/snug"} {
		if !reaches(p) || !strings.Contains(script, "/host"+p) {
			t.Errorf("the install step does not make the node's %s", p)
		}
	}
}
