package imagefs

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ErrorRecord is ext4's live record of the errors a mounted filesystem
// found (sysfs). The kernel keeps it even when it cannot write the
// superblock, as after an I/O error.
type ErrorRecord struct {
	Count int64    `json:"count"`
	First *FsError `json:"first,omitempty"`
	Last  *FsError `json:"last,omitempty"`
}

// ErrorRecord reads the live error record of the mounted image. Fields
// sysfs does not show are left zero.
func (m *Mounted) ErrorRecord() ErrorRecord {
	dir := m.SysfsDir()
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || len(b) > 256 {
			return ""
		}
		return strings.TrimSpace(string(b))
	}
	num := func(name string) int64 {
		n, err := strconv.ParseInt(read(name), 10, 64)
		if err != nil || n < 0 {
			return 0
		}
		return n
	}
	rec := ErrorRecord{Count: num("errors_count")}
	one := func(prefix string) *FsError {
		t := num(prefix + "_time")
		if t == 0 {
			return nil
		}
		return &FsError{
			Time:     time.Unix(t, 0).UTC(),
			Function: cString([]byte(read(prefix + "_func"))),
			Line:     uint32(min(num(prefix+"_line"), 1<<32-1)),
			Inode:    uint32(min(num(prefix+"_ino"), 1<<32-1)),
			Block:    uint64(num(prefix + "_block")),
			Code:     ext4ErrorName(int(num(prefix + "_errcode"))),
		}
	}
	rec.First, rec.Last = one("first_error"), one("last_error")
	return rec
}

// ext4ErrorName names ext4's error codes (EXT4_ERR_*, as sysfs and the
// superblock record them) by the errno they stand for.
func ext4ErrorName(code int) string {
	names := []string{"", "unknown", "EIO", "ENOMEM", "EFSBADCRC", "EFSCORRUPTED", "ENOSPC", "ENOKEY",
		"EROFS", "EFBIG", "EEXIST", "ERANGE", "EOVERFLOW", "EBUSY", "ENOTDIR", "ENOTEMPTY", "ESHUTDOWN", "EFAULT"}
	if code > 0 && code < len(names) {
		return names[code]
	}
	if code == 0 {
		return ""
	}
	return "code " + strconv.Itoa(code)
}
