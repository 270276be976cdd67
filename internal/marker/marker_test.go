package marker

import (
	"os"
	"path/filepath"
	"testing"
)

func TestMarkerRoundTrip(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "quarantined")
	if got := Read(p); got != "" {
		t.Errorf("no marker: Read = %q, want empty", got)
	}
	for _, tc := range []struct{ write, want string }{
		{"e2fsck exit 4", "e2fsck exit 4"},
		{"  spaced \n", "spaced"},
		{"", "marked"},
	} {
		if err := Write(p, tc.write); err != nil {
			t.Fatal(err)
		}
		if got := Read(p); got != tc.want {
			t.Errorf("Write(%q): Read = %q, want %q", tc.write, got, tc.want)
		}
	}
	if _, err := os.Stat(p + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("temporary file left: %v", err)
	}
}
