// Package units formats byte counts the way snug writes them everywhere:
// IEC units with up to two decimals ("4KiB", "9.77GiB").
package units

import (
	"strconv"
	"strings"
)

// FormatBytes formats n bytes in IEC units: "0B", "4KiB", "9.77GiB".
func FormatBytes(n int64) string {
	neg := n < 0
	if neg {
		n = -n
	}
	names := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(names)-1 {
		f /= 1024
		i++
	}
	out := strconv.FormatFloat(f, 'f', 2, 64)
	out = strings.TrimRight(strings.TrimRight(out, "0"), ".")
	if neg {
		out = "-" + out
	}
	return out + names[i]
}
