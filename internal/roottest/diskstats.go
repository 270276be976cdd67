package roottest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Flushes is how many cache flushes the block device (e.g. /dev/loop3)
// has completed since it appeared, from /proc/diskstats (its 16th
// counter, kernel 5.5 and later).
func Flushes(device string) (uint64, error) {
	b, err := os.ReadFile("/proc/diskstats")
	if err != nil {
		return 0, err
	}
	return parseFlushes(string(b), filepath.Base(device))
}

// parseFlushes finds name's flush counter in the text of /proc/diskstats:
// "major minor name" and then 17 counters per line.
func parseFlushes(text, name string) (uint64, error) {
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[2] != name {
			continue
		}
		if len(f) < 19 {
			return 0, fmt.Errorf("/proc/diskstats: %s has no flush counter (%d fields)", name, len(f))
		}
		return strconv.ParseUint(f[18], 10, 64)
	}
	return 0, fmt.Errorf("/proc/diskstats: no device %s", name)
}
