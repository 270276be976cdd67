package integration

import (
	"os"
	"path/filepath"
	"testing"
)

// TestMain removes what the tests built once (the binaries, the test
// image) when they are done.
func TestMain(m *testing.M) {
	code := m.Run()
	for _, p := range []string{snugBin, imageTar} {
		if p != "" {
			os.RemoveAll(filepath.Dir(p))
		}
	}
	os.Exit(code)
}
