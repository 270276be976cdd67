package imagefs

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Superblock fields and values emptyJournalLog reads.
const (
	sbJournalInum   = 0xE0
	sbJournalDev    = 0xE4
	sbJnlBackupType = 0xFD
	sbJnlBlocks     = 0x10C // the journal inode's i_block (60 bytes), copied by mke2fs

	journalInode      = 8
	jnlBackupBlocks   = 1
	extentMagic       = 0xF30A
	extentHeaderBytes = 12
	extentBytes       = 12
	extentInitMax     = 32768 // ee_len above it: an unwritten extent

	jbd2Magic       = 0xC03B3998
	jbd2SuperV1     = 3
	jbd2SuperV2     = 4
	jsbMaxLen       = 0x10
	jsbStart        = 0x1C
	jsbBlockType    = 0x4
	jsbBytesChecked = 0x20
)

// emptyJournalLog punches the log blocks of the image's journal out of the
// unmounted image file f, keeping the journal superblock. It runs on a new
// image, whose journal is clean (s_start 0: nothing to replay) and whose
// log blocks hold only the commits of the balloon's placement: jbd2 never
// reads the log of a clean journal, and a hole reads as the zeros of a
// journal that mkfs had zeroed. The image's footprint, and every copy of
// a template, is that much smaller (1.1 MiB for the default policy's
// balloon). An image whose journal it cannot place for certain (an
// external journal, no inode backup in the superblock, an extent tree
// with index blocks, a journal superblock that does not match) or whose
// journal is not clean is left as it is.
func emptyJournalLog(f *os.File) error {
	b, sb, err := readPrimarySuperblock(f)
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	if !sb.HasJournal || le.Uint32(b[sbJournalInum:]) != journalInode || le.Uint32(b[sbJournalDev:]) != 0 || b[sbJnlBackupType] != jnlBackupBlocks {
		return nil
	}
	extents, ok := journalExtents(b[sbJnlBlocks:sbJnlBlocks+60], sb.Blocks)
	if !ok {
		return nil
	}
	var first int64 = -1
	var total int64
	for _, e := range extents {
		total += e.len
		if e.logical == 0 {
			first = e.start
		}
	}
	if first < 0 {
		return nil
	}
	jsb := make([]byte, jsbBytesChecked)
	if _, err := f.ReadAt(jsb, first*sb.BlockSize); err != nil {
		return fmt.Errorf("read journal superblock: %w", err)
	}
	be := binary.BigEndian
	if be.Uint32(jsb) != jbd2Magic || (be.Uint32(jsb[jsbBlockType:]) != jbd2SuperV1 && be.Uint32(jsb[jsbBlockType:]) != jbd2SuperV2) ||
		int64(be.Uint32(jsb[jsbMaxLen:])) != total || be.Uint32(jsb[jsbStart:]) != 0 {
		return nil
	}
	for _, e := range extents {
		start, n := e.start, e.len
		if e.logical == 0 { // the journal superblock stays
			start, n = start+1, n-1
		}
		if n == 0 {
			continue
		}
		if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, start*sb.BlockSize, n*sb.BlockSize); err != nil {
			return fmt.Errorf("punch the journal's log: %w", err)
		}
	}
	return nil
}

// treeExtent is one mapping of an ext4 extent tree leaf, in blocks: len
// blocks from logical block logical at physical block start.
type treeExtent struct{ logical, start, len int64 }

// journalExtents decodes an inode's i_block holding an extent tree of
// depth 0 (its extents in the inode itself), every extent within blocks;
// false for anything else.
func journalExtents(iblock []byte, blocks int64) ([]treeExtent, bool) {
	le := binary.LittleEndian
	if le.Uint16(iblock) != extentMagic || le.Uint16(iblock[6:]) != 0 {
		return nil, false
	}
	n := int(le.Uint16(iblock[2:]))
	if n == 0 || extentHeaderBytes+n*extentBytes > len(iblock) {
		return nil, false
	}
	var out []treeExtent
	for i := range n {
		e := iblock[extentHeaderBytes+i*extentBytes:]
		length := int64(le.Uint16(e[4:]))
		if length > extentInitMax {
			length -= extentInitMax
		}
		start := int64(le.Uint16(e[6:]))<<32 | int64(le.Uint32(e[8:]))
		if length == 0 || start <= 0 || start+length > blocks {
			return nil, false
		}
		out = append(out, treeExtent{logical: int64(le.Uint32(e)), start: start, len: length})
	}
	return out, true
}
