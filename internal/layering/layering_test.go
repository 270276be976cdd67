package layering

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/snugfs/snug/"

// layer is the rank of a package of the module by its path (bigger is
// higher); ok is false for what the rule does not cover (tests, tools).
func layer(pkg string) (rank int, ok bool) {
	switch {
	case strings.HasPrefix(pkg, "internal/"):
		return 0, true
	case pkg == "api", pkg == "control/wire":
		return 1, true
	case pkg == "imagefs":
		return 2, true
	case pkg == "config":
		return 3, true
	case pkg == "images":
		return 4, true
	case pkg == "snapshotter", pkg == "fsck", pkg == "differ":
		return 5, true
	case pkg == "control", pkg == "hooks":
		return 6, true
	case pkg == "daemon", pkg == "snapshotter/plugin":
		return 7, true
	case strings.HasPrefix(pkg, "cmd/"):
		return 8, true
	}
	return 0, false
}

// within reports an import between two packages under prefix: helpers
// using helpers, a binary its own packages.
func within(pkg, dep, prefix string) bool {
	return strings.HasPrefix(pkg, prefix) && strings.HasPrefix(dep, prefix)
}

// TestImportsRunDownTheLayers reads the imports of every non-test Go file
// of the module and refuses one that runs up the layers or across one.
func TestImportsRunDownTheLayers(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found from %s: %v", root, err)
	}
	checked := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		pkg := filepath.ToSlash(rel)
		from, ok := layer(pkg)
		if !ok {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			dep, ok := strings.CutPrefix(strings.Trim(imp.Path.Value, `"`), module)
			if !ok {
				continue
			}
			checked++
			to, known := layer(dep)
			switch {
			case pkg == "control" && dep != "api" && dep != "control/wire":
				t.Errorf("control imports %s: it is transport only (api and control/wire)", dep)
			case !known:
				t.Errorf("%s imports %s, which has no layer", pkg, dep)
			case to >= from && !within(pkg, dep, "internal/") && !within(pkg, dep, "cmd/"):
				t.Errorf("%s (layer %d) imports %s (layer %d): imports run down the layers only", pkg, from, dep, to)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 20 {
		t.Fatalf("only %d imports of the module's packages checked: the walk missed the sources", checked)
	}
}
