package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snugfs/snug/imagefs"
)

// TestPullThroughDiffer pulls the test image from a registry (a minimal
// read-only OCI distribution server over the image's OCI layout, plain
// HTTP on localhost; this machine has no registry) with `ctr images pull`,
// which unpacks through containerd's transfer service like an import: every
// layer must come through snug's differ, written from its tar, and a
// container on the pulled image must see every layer. The stack's
// containerd unpacks a pull's layers side by side (max_concurrent_unpacks,
// snug's "rebase" capability): each layer prepared without its parent,
// given it at Commit.
func TestPullThroughDiffer(t *testing.T) {
	s := startStack(t, containerPolicy)
	layout := t.TempDir()
	untar(t, testImage(t), layout)
	addr := serveRegistry(t, layout)
	ref := addr + "/snug-test:latest"
	s.ctr("images", "pull", "--plain-http", "--snapshotter", "snug", ref)
	out := s.ctr("run", "--rm", "--snapshotter", "snug", ref, "pulled", "/bin/sh", "-c",
		`cat /data/keep; ls -a /opaque; cd /data && sha256sum -c blob.sha256`)
	for _, want := range []string{"keep v2\n", ".\n..\nnew\n", "blob: OK\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("container output lacks %q:\n%s", want, out)
		}
	}
	requireLayersFromTar(t, s.snug.Root, 3)
	if log := s.containerdLog(); strings.Contains(log, "does not support rebase capability") {
		t.Errorf("containerd unpacked the pull one layer after the other:\n%s", lastLines(log, 20))
	}
}

// requireLayersFromTar checks that root holds n layer images, each written
// from its tar by snug's differ.
func requireLayersFromTar(t *testing.T, root string, n int) {
	t.Helper()
	// A packed layer (mkfs.ext4 -d) is labelled; tar2ext4 writes no label,
	// and converted rw images have a journal.
	requireLayers(t, root, n, "written from its tar", func(sb *imagefs.Superblock) bool {
		return !sb.HasJournal && sb.Label != packedLayerLabel
	})
}

// packedLayerLabel is the label of a layer image imagefs.CreateLayer packs.
const packedLayerLabel = "snug-layer"

// requireLayersPacked checks that snug's root holds n layer images, each
// packed from a directory (imagefs.CreateLayer), none written from its tar.
func requireLayersPacked(t *testing.T, root string, n int) {
	t.Helper()
	requireLayers(t, root, n, "packed from its unpack dirs", func(sb *imagefs.Superblock) bool {
		return sb.Label == packedLayerLabel
	})
}

// requireLayers checks that snug's root holds n layer images and that each
// one's superblock is made as made says (how, in words).
func requireLayers(t *testing.T, root string, n int, how string, made func(*imagefs.Superblock) bool) {
	t.Helper()
	layers, _ := filepath.Glob(filepath.Join(root, "snapshots", "*", "layer.img"))
	if len(layers) != n {
		t.Errorf("%d layer images, want %d", len(layers), n)
	}
	for _, l := range layers {
		if sb, err := imagefs.ReadSuperblock(l); err != nil || !made(sb) {
			t.Errorf("layer %s not %s: %+v %v", l, how, sb, err)
		}
	}
}

// untar extracts the tar archive at path into dir.
func untar(t *testing.T, path, dir string) {
	t.Helper()
	if out, err := exec.Command("tar", "-xf", path, "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("tar -xf %s: %v\n%s", path, err, out)
	}
}

// serveRegistry serves the OCI layout in dir as a read-only registry on
// localhost until the test ends, and returns its host:port. Any repository
// name answers with the layout; a tag is looked up in index.json.
func serveRegistry(t *testing.T, dir string) string {
	t.Helper()
	var index struct {
		Manifests []struct {
			MediaType   string            `json:"mediaType"`
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &index); err != nil {
		t.Fatal(err)
	}
	blob := func(w http.ResponseWriter, r *http.Request, digest, mediaType string) {
		hex, ok := strings.CutPrefix(digest, "sha256:")
		if !ok || strings.ContainsAny(hex, "/.") {
			http.NotFound(w, r)
			return
		}
		data, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", hex))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", mediaType)
		w.Header().Set("Docker-Content-Digest", digest)
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		if r.Method != http.MethodHead {
			w.Write(data)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v2/", func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/v2/"), "/")
		n := len(parts)
		switch {
		case r.URL.Path == "/v2/":
			w.WriteHeader(http.StatusOK)
		case n >= 3 && parts[n-2] == "blobs":
			blob(w, r, parts[n-1], "application/octet-stream")
		case n >= 3 && parts[n-2] == "manifests":
			ref := parts[n-1]
			for _, m := range index.Manifests {
				if m.Digest == ref || m.Annotations["org.opencontainers.image.ref.name"] == ref {
					blob(w, r, m.Digest, m.MediaType)
					return
				}
			}
			http.NotFound(w, r)
		default:
			http.NotFound(w, r)
		}
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}
