package imagefs

import (
	"encoding/binary"
	"fmt"
	"os"
	"sort"
)

// extent is one mapping of a file: Length bytes at Logical in the file lie
// at Physical on the filesystem's device, which for a loop-mounted image is
// the same offset in the image file.
type extent struct {
	Logical, Physical, Length int64
	Unwritten                 bool
}

const (
	fiemapHeaderSize  = 32
	fiemapExtentSize  = 56
	fiemapBatch       = 512
	fiemapFlagSync    = 0x1
	fiemapExtentLast  = 0x1
	fiemapExtentUnwr  = 0x800
	fiemapExtentUnknw = 0x2 // location not known yet (delayed allocation)
)

// fileExtents returns every extent of f (FS_IOC_FIEMAP), sorted by physical
// address. Extents beyond the file size (fallocated with KEEP_SIZE) are
// included: FIEMAP is asked for the whole logical range.
func fileExtents(f *os.File) ([]extent, error) {
	var out []extent
	buf := make([]byte, fiemapHeaderSize+fiemapBatch*fiemapExtentSize)
	var start uint64
	for {
		clear(buf[:fiemapHeaderSize])
		binary.LittleEndian.PutUint64(buf[0:], start)
		binary.LittleEndian.PutUint64(buf[8:], ^uint64(0)-start)
		binary.LittleEndian.PutUint32(buf[16:], fiemapFlagSync)
		binary.LittleEndian.PutUint32(buf[24:], fiemapBatch)
		if err := ioctlBuf(f, ioctlFIEMAP, buf); err != nil {
			return nil, fmt.Errorf("FIEMAP %s: %w", f.Name(), err)
		}
		exts, last, next, err := decodeFiemap(buf)
		if err != nil {
			return nil, fmt.Errorf("FIEMAP %s: %w", f.Name(), err)
		}
		out = append(out, exts...)
		if last || len(exts) == 0 {
			break
		}
		start = next
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Physical < out[j].Physical })
	return out, nil
}

// decodeFiemap reads the extents the kernel wrote into a FIEMAP buffer. It
// reports whether the last extent of the file was among them and where the
// next call should start.
func decodeFiemap(buf []byte) (exts []extent, last bool, next uint64, err error) {
	if len(buf) < fiemapHeaderSize {
		return nil, false, 0, fmt.Errorf("short fiemap buffer")
	}
	n := int(binary.LittleEndian.Uint32(buf[20:]))
	if n > (len(buf)-fiemapHeaderSize)/fiemapExtentSize {
		return nil, false, 0, fmt.Errorf("kernel mapped %d extents, more than the buffer holds", n)
	}
	for i := range n {
		e := buf[fiemapHeaderSize+i*fiemapExtentSize:]
		logical := binary.LittleEndian.Uint64(e[0:])
		physical := binary.LittleEndian.Uint64(e[8:])
		length := binary.LittleEndian.Uint64(e[16:])
		flags := binary.LittleEndian.Uint32(e[40:])
		const maxOff = 1 << 62
		if logical > maxOff || physical > maxOff || length > maxOff {
			return nil, false, 0, fmt.Errorf("extent out of range")
		}
		next = logical + length
		if flags&fiemapExtentLast != 0 {
			last = true
		}
		if flags&fiemapExtentUnknw != 0 {
			continue
		}
		exts = append(exts, extent{
			Logical: int64(logical), Physical: int64(physical), Length: int64(length),
			Unwritten: flags&fiemapExtentUnwr != 0,
		})
	}
	return exts, last, next, nil
}
