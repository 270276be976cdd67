package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/internal/errclass"
	"github.com/snugfs/snug/internal/units"
)

// Size is a byte count read from the policy or the command line. In TOML it is
// either an integer (bytes) or a string with a unit: "10GiB", "512MiB", "4096".
type Size int64

// Common sizes.
const (
	KiB Size = 1 << (10 * (iota + 1))
	MiB
	GiB
	TiB
	PiB
)

// maxSize bounds every size read from outside (exclusive): 1 EiB is larger than any disk
// image snug will ever handle and leaves room for arithmetic without overflow.
const maxSize = 1 << 60

var unitSizes = map[string]Size{
	"": 1, "b": 1,
	"k": KiB, "kib": KiB, "m": MiB, "mib": MiB, "g": GiB, "gib": GiB, "t": TiB, "tib": TiB, "p": PiB, "pib": PiB,
	"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "pb": 1e15,
}

// ErrBadSize is returned when a size cannot be parsed or is out of range.
var ErrBadSize = errclass.New("invalid size", errdefs.ErrInvalidArgument)

// ParseSize parses a size such as "10GiB", "1.5G", "512MiB" or "4096".
// Binary units (KiB, MiB, GiB, TiB, PiB, and K, M, G, T, P as mkfs and
// truncate read them) are powers of 1024; KB, MB, GB, TB, PB are powers of 1000.
// Fractions are allowed with a unit and rounded down to a byte.
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(t)
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	if num == "" {
		return 0, fmt.Errorf("%w %q: no number", ErrBadSize, s)
	}
	mult, ok := unitSizes[unit]
	if !ok {
		return 0, fmt.Errorf("%w %q: unknown unit %q (use B, KiB, MiB, GiB, TiB)", ErrBadSize, s, t[i:])
	}
	if !strings.Contains(num, ".") {
		n, err := strconv.ParseUint(num, 10, 63)
		if err != nil || n >= maxSize/uint64(mult) {
			return 0, fmt.Errorf("%w %q: out of range (max 1EiB)", ErrBadSize, s)
		}
		return Size(n) * mult, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(f) || f < 0 {
		return 0, fmt.Errorf("%w %q: bad number", ErrBadSize, s)
	}
	b := f * float64(mult)
	if b >= maxSize {
		return 0, fmt.Errorf("%w %q: out of range (max 1EiB)", ErrBadSize, s)
	}
	return Size(b), nil
}

// UnmarshalText implements encoding.TextUnmarshaler (used by flags).
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// UnmarshalTOML accepts an integer number of bytes or a string with a unit.
func (s *Size) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case int64:
		if x < 0 || x >= maxSize {
			return fmt.Errorf("%w %d: out of range (0 to 1EiB)", ErrBadSize, x)
		}
		*s = Size(x)
		return nil
	case string:
		return s.UnmarshalText([]byte(x))
	default:
		return fmt.Errorf("%w: want bytes or a string like \"10GiB\", got %T", ErrBadSize, v)
	}
}

// Set implements flag.Value.
func (s *Size) Set(v string) error { return s.UnmarshalText([]byte(v)) }

// Bytes returns the size as an int64.
func (s Size) Bytes() int64 { return int64(s) }

// String formats the size in IEC units with up to two decimals ("1.5GiB").
func (s Size) String() string { return FormatBytes(int64(s)) }

// FormatBytes formats n bytes in IEC units: "0B", "4KiB", "9.77GiB".
func FormatBytes(n int64) string { return units.FormatBytes(n) }
