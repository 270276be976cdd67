package integration

import (
	"os"
	"path/filepath"
	"testing"
)

// TestMain removes the binaries snugBinary built once the tests are done.
func TestMain(m *testing.M) {
	code := m.Run()
	if snugBin != "" {
		os.RemoveAll(filepath.Dir(snugBin))
	}
	os.Exit(code)
}
