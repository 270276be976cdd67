// Package marker reads and writes the small files that mark a snapshot's
// directory with a state and its reason (quarantined, damaged, its policy
// class): written atomically, so a crash leaves the old marker or the new
// one, never half of one.
package marker

import (
	"os"
	"strings"
)

// Read returns a marker file's reason ("marked" for an empty one), or ""
// when there is no marker.
func Read(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if r := strings.TrimSpace(string(b)); r != "" {
		return r
	}
	return "marked"
}

// Write writes a marker file atomically: a temporary file renamed over it.
func Write(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
