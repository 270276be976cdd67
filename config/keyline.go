package config

import (
	"bufio"
	"bytes"
	"strings"
)

// keyLine finds the line where a dotted key (as toml.Key.String prints it) is
// set, so errors found after decoding can still point at the file. It knows
// table headers ([a.b]) and dotted keys (a.b = 1); it returns 0 when unsure.
func keyLine(data []byte, key string) int {
	table := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), len(data)+1)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "["):
			table = normalizeKey(strings.Trim(line, "[] \t"))
			if table == key {
				return n
			}
			continue
		}
		eq := strings.IndexByte(line, '=')
		if eq < 0 {
			continue
		}
		full := normalizeKey(line[:eq])
		if table != "" {
			full = table + "." + full
		}
		if full == key {
			return n
		}
	}
	return 0
}

// normalizeKey drops spaces and quotes around the parts of a dotted key.
func normalizeKey(k string) string {
	parts := strings.Split(k, ".")
	for i, p := range parts {
		parts[i] = strings.Trim(strings.TrimSpace(p), `"'`)
	}
	return strings.Join(parts, ".")
}
