package imagefs

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"strings"
)

// errUUIDLayout: setUUIDInSuperblocks does not handle this image's layout; tune2fs -U
// does.
var errUUIDLayout = errors.New("layout not handled in place")

// Superblock fields and features setUUIDInSuperblocks reads or writes.
const (
	sbFirstDataBlock  = 0x14
	sbBlocksPerGroup  = 0x20
	sbMagic           = 0x38
	sbFeatureCompat   = 0x5C
	sbFeatureIncompat = 0x60
	sbFeatureROCompat = 0x64
	sbUUID            = 0x68
	sbChecksumType    = 0x175
	sbBackupBgs       = 0x24C
	sbChecksum        = 0x3FC

	compatSparseSuper2   = 0x200
	roCompatSparseSuper  = 0x1
	roCompatMetadataCsum = 0x400
	incompatCsumSeed     = 0x2000
	checksumTypeCrc32c   = 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// setUUIDInSuperblocks gives the unmounted image open in f the UUID uuid, in its
// primary superblock and every backup, as `tune2fs -U` does, without
// syncing (the caller syncs the new image once). It handles the images
// snug makes: metadata_csum with metadata_csum_seed, so that the UUID is
// in the superblocks only (every other checksum is seeded from
// s_checksum_seed) and each superblock's own checksum is all that changes
// with it. Any other layout returns errUUIDLayout and nothing is written.
// It reads every superblock copy before it writes any, so an image whose
// backups are not where its primary says fails whole.
func setUUIDInSuperblocks(f *os.File, uuid string) error {
	raw, err := parseUUID(uuid)
	if err != nil {
		return err
	}
	primary, sb, err := readPrimarySuperblock(f)
	if err != nil {
		return err
	}
	offsets, err := superblockOffsets(primary, sb)
	if err != nil {
		return err
	}
	copies := make([][]byte, len(offsets))
	copies[0] = primary
	for i := 1; i < len(offsets); i++ {
		b := make([]byte, superblockSize)
		if _, err := f.ReadAt(b, offsets[i]); err != nil {
			return fmt.Errorf("read backup superblock at %d: %w", offsets[i], err)
		}
		if !sameLayout(primary, b) {
			return fmt.Errorf("backup superblock at %d: %w: not a copy of the primary", offsets[i], errUUIDLayout)
		}
		copies[i] = b
	}
	for i, b := range copies {
		copy(b[sbUUID:sbUUID+16], raw)
		binary.LittleEndian.PutUint32(b[sbChecksum:], superblockChecksum(b))
		if _, err := f.WriteAt(b, offsets[i]); err != nil {
			return fmt.Errorf("write superblock at %d: %w", offsets[i], err)
		}
	}
	return nil
}

// superblockOffsets is where the superblock and its backups are, primary
// first, for a layout setUUIDInSuperblocks handles.
func superblockOffsets(b []byte, sb *Superblock) ([]int64, error) {
	le := binary.LittleEndian
	compat, incompat, ro := le.Uint32(b[sbFeatureCompat:]), le.Uint32(b[sbFeatureIncompat:]), le.Uint32(b[sbFeatureROCompat:])
	if ro&roCompatMetadataCsum == 0 || incompat&incompatCsumSeed == 0 || b[sbChecksumType] != checksumTypeCrc32c {
		return nil, fmt.Errorf("%w: needs metadata_csum with metadata_csum_seed", errUUIDLayout)
	}
	first, perGroup := int64(le.Uint32(b[sbFirstDataBlock:])), int64(le.Uint32(b[sbBlocksPerGroup:]))
	if perGroup <= 0 || perGroup > 8*sb.BlockSize || first >= sb.Blocks {
		return nil, fmt.Errorf("%w: %d blocks per group, first data block %d", ErrNotImage, perGroup, first)
	}
	groups := (sb.Blocks - first + perGroup - 1) / perGroup
	var backups []int64
	switch {
	case compat&compatSparseSuper2 != 0:
		for _, g := range []uint32{le.Uint32(b[sbBackupBgs:]), le.Uint32(b[sbBackupBgs+4:])} {
			if g != 0 && int64(g) < groups {
				backups = append(backups, int64(g))
			}
		}
	case ro&roCompatSparseSuper != 0:
		backups = sparseBackupGroups(groups)
	default:
		for g := int64(1); g < groups; g++ {
			backups = append(backups, g)
		}
	}
	offsets := []int64{superblockOffset}
	for _, g := range backups {
		offsets = append(offsets, (first+g*perGroup)*sb.BlockSize)
	}
	return offsets, nil
}

// sparseBackupGroups lists the groups below groups that hold a backup
// superblock under sparse_super: 1 and the powers of 3, 5 and 7, in order.
func sparseBackupGroups(groups int64) []int64 {
	var gs []int64
	if groups > 1 {
		gs = append(gs, 1)
	}
	p3, p5, p7 := int64(3), int64(5), int64(7)
	for {
		g := min(p3, p5, p7)
		if g >= groups {
			return gs
		}
		gs = append(gs, g)
		switch g {
		case p3:
			p3 *= 3
		case p5:
			p5 *= 5
		default:
			p7 *= 7
		}
	}
}

// sameLayout reports whether backup b describes the filesystem of primary:
// the fields that place and size it, as e2fsck compares them.
func sameLayout(primary, b []byte) bool {
	for _, r := range [][2]int{
		{sbMagic, sbMagic + 2},
		{0x0, 0x8}, // inodes, blocks
		{sbFirstDataBlock, sbBlocksPerGroup + 4 + 4}, // first data block, block size, cluster size, blocks and clusters per group
		{0x28, 0x2C},                             // inodes per group
		{sbFeatureCompat, sbFeatureROCompat + 4}, // features
		{sbUUID, sbUUID + 16},                    // the UUID being replaced
		{0x150, 0x154},                           // blocks, high half
	} {
		if string(primary[r[0]:r[1]]) != string(b[r[0]:r[1]]) {
			return false
		}
	}
	return true
}

// parseUUID turns a UUID's text into its 16 bytes.
func parseUUID(uuid string) ([]byte, error) {
	raw, err := hex.DecodeString(strings.ReplaceAll(uuid, "-", ""))
	if err != nil || len(raw) != 16 {
		return nil, fmt.Errorf("UUID %q: not 16 bytes of hex", uuid)
	}
	return raw, nil
}

// superblockChecksum is s_checksum: crc32c of the superblock up to it,
// seeded with ~0 and not inverted at the end (ext4_superblock_csum).
func superblockChecksum(b []byte) uint32 {
	return ^crc32.Update(0, castagnoli, b[:sbChecksum])
}
