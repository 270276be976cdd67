package units

import "testing"

func TestFormatBytes(t *testing.T) {
	for in, want := range map[int64]string{0: "0B", 1023: "1023B", 4096: "4KiB", 1536: "1.5KiB", 10 << 30: "10GiB", -2048: "-2KiB", 10485759999: "9.77GiB"} {
		if got := FormatBytes(in); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", in, got, want)
		}
	}
}
