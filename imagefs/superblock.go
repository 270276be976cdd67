package imagefs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/snugfs/snug/api"
)

// Superblock holds what snug reads from an ext4 superblock. Every field is
// bounded against the image file before use: images are untrusted input.
type Superblock struct {
	BlockSize   int64
	Blocks      int64 // filesystem size in blocks
	FreeBlocks  int64
	Inodes      int64
	FreeInodes  int64
	UUID        [16]byte
	Label       string
	State       uint16 // 1 = cleanly unmounted, 2 = errors detected, 4 = orphans
	NeedsRecov  bool   // the journal holds transactions not yet replayed
	HasJournal  bool
	FastCommit  bool // the journal has a fast-commit area (mkfs -O fast_commit)
	ErrorCount  int64
	FirstError  *FsError
	LastError   *FsError
	MountOpts   string
	LastMounted string
}

// FsError is an error ext4 recorded (api.FsError).
type FsError = api.FsError

const (
	superblockOffset = 1024
	superblockSize   = 1024
	ext4Magic        = 0xEF53

	stateErrors = 0x2

	compatHasJournal = 0x4
	compatFastCommit = 0x400
	incompatRecover  = 0x4
	incompat64bit    = 0x80
	maxLogBlockSize  = 6 // 64 KiB blocks
)

// ReadSuperblock reads and validates the primary superblock of the image at
// path.
func ReadSuperblock(path string) (*Superblock, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrNotImage, path)
	}
	buf := make([]byte, superblockSize)
	if _, err := f.ReadAt(buf, superblockOffset); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("%w: %s is too short to hold a superblock", ErrNotImage, path)
		}
		return nil, err
	}
	sb, err := parseSuperblock(buf, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return sb, nil
}

// readPrimarySuperblock reads the primary superblock of the image open in
// f: its bytes, and what parseSuperblock makes of them.
func readPrimarySuperblock(f *os.File) ([]byte, *Superblock, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	b := make([]byte, superblockSize)
	if _, err := f.ReadAt(b, superblockOffset); err != nil {
		return nil, nil, fmt.Errorf("read superblock: %w", err)
	}
	sb, err := parseSuperblock(b, st.Size())
	return b, sb, err
}

// parseSuperblock decodes a 1024-byte ext4 superblock found in a file of
// fileSize bytes. It rejects anything a real ext4 filesystem of that file
// could not hold.
func parseSuperblock(b []byte, fileSize int64) (*Superblock, error) {
	if len(b) < superblockSize {
		return nil, fmt.Errorf("%w: short superblock", ErrNotImage)
	}
	le := binary.LittleEndian
	if le.Uint16(b[0x38:]) != ext4Magic {
		return nil, fmt.Errorf("%w: no ext2/3/4 magic", ErrNotImage)
	}
	logBS := le.Uint32(b[0x18:])
	if logBS > maxLogBlockSize {
		return nil, fmt.Errorf("%w: block size 2^%d KiB is out of range", ErrNotImage, logBS)
	}
	sb := &Superblock{BlockSize: 1024 << logBS}
	compat, incompat := le.Uint32(b[0x5C:]), le.Uint32(b[0x60:])
	blocks, free := uint64(le.Uint32(b[0x4:])), uint64(le.Uint32(b[0xC:]))
	if incompat&incompat64bit != 0 {
		blocks |= uint64(le.Uint32(b[0x150:])) << 32
		free |= uint64(le.Uint32(b[0x158:])) << 32
	}
	if blocks == 0 || blocks > uint64(fileSize/sb.BlockSize) {
		return nil, fmt.Errorf("%w: %d blocks of %d bytes do not fit in a %d-byte file", ErrNotImage, blocks, sb.BlockSize, fileSize)
	}
	if free > blocks {
		return nil, fmt.Errorf("%w: %d free blocks of %d", ErrNotImage, free, blocks)
	}
	sb.Blocks, sb.FreeBlocks = int64(blocks), int64(free)
	inodes, freeInodes := le.Uint32(b[0x0:]), le.Uint32(b[0x10:])
	if inodes == 0 || freeInodes > inodes {
		return nil, fmt.Errorf("%w: %d free inodes of %d", ErrNotImage, freeInodes, inodes)
	}
	sb.Inodes, sb.FreeInodes = int64(inodes), int64(freeInodes)
	copy(sb.UUID[:], b[0x68:0x78])
	sb.Label = cString(b[0x78:0x88])
	sb.State = le.Uint16(b[0x3A:])
	sb.HasJournal = compat&compatHasJournal != 0
	sb.FastCommit = compat&compatFastCommit != 0
	sb.NeedsRecov = incompat&incompatRecover != 0
	sb.LastMounted = cString(b[0x88:0xC8])
	sb.ErrorCount = int64(le.Uint32(b[0x194:]))
	sb.FirstError = decodeFsError(b, 0x198, 0x19C, 0x1A0, 0x1A8, 0x1C8)
	sb.LastError = decodeFsError(b, 0x1CC, 0x1D0, 0x1D8, 0x1E0, 0x1D4)
	// s_first_error_errcode and s_last_error_errcode.
	if sb.FirstError != nil {
		sb.FirstError.Code = ext4ErrorName(int(b[0x27A]))
	}
	if sb.LastError != nil {
		sb.LastError.Code = ext4ErrorName(int(b[0x27B]))
	}
	sb.MountOpts = cString(b[0x200:0x240])
	return sb, nil
}

func decodeFsError(b []byte, timeOff, inoOff, blockOff, funcOff, lineOff int) *FsError {
	le := binary.LittleEndian
	t := le.Uint32(b[timeOff:])
	if t == 0 {
		return nil
	}
	return &FsError{
		Time:     time.Unix(int64(t), 0).UTC(),
		Inode:    le.Uint32(b[inoOff:]),
		Block:    le.Uint64(b[blockOff:]),
		Function: cString(b[funcOff : funcOff+32]),
		Line:     le.Uint32(b[lineOff:]),
	}
}

// cString returns the bytes up to the first NUL, with anything that is not
// printable ASCII replaced, so a crafted superblock cannot inject control
// characters into logs or terminals.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	out := make([]byte, len(b))
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		out[i] = c
	}
	return string(out)
}

// HasErrors reports whether ext4 recorded an error in this superblock.
func (sb *Superblock) HasErrors() bool { return sb.State&stateErrors != 0 || sb.ErrorCount > 0 }

// Size is the filesystem size in bytes.
func (sb *Superblock) Size() int64 { return sb.Blocks * sb.BlockSize }

// UUIDString formats the filesystem UUID.
func (sb *Superblock) UUIDString() string {
	u := sb.UUID
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}
