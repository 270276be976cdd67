package roottest

import "testing"

func TestParseFlushes(t *testing.T) {
	const text = `   7       0 loop0 2155 0 59592 302 1436 0 13424 1204 0 2788 1829 0 0 0 0 141612 322
   7       1 loop1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 7 1
 254       0 vda 1 2 3 4 5 6 7 8 9 10 11
`
	for _, c := range []struct {
		name string
		want uint64
		ok   bool
	}{
		{"loop0", 141612, true},
		{"loop1", 7, true},
		{"vda", 0, false}, // an old kernel's line, without the flush counters
		{"loop2", 0, false},
	} {
		got, err := parseFlushes(text, c.name)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseFlushes(%s) = %d, %v; want %d, ok %v", c.name, got, err, c.want, c.ok)
		}
	}
}
