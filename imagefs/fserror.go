package imagefs

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/api"
)

// ErrorRecord is ext4's live error record (api.ErrorRecord).
type ErrorRecord = api.ErrorRecord

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

// ext4Codes are ext4's error codes (EXT4_ERR_*, as sysfs and the
// superblock record them), by number: the name ext4 gives each, and the
// errno it stands for.
var ext4Codes = []struct {
	name  string
	errno unix.Errno
}{
	{"", 0}, {"unknown", 0}, {"EIO", unix.EIO}, {"ENOMEM", unix.ENOMEM},
	{"EFSBADCRC", unix.EBADMSG}, {"EFSCORRUPTED", unix.EUCLEAN}, {"ENOSPC", unix.ENOSPC},
	{"ENOKEY", unix.ENOKEY}, {"EROFS", unix.EROFS}, {"EFBIG", unix.EFBIG}, {"EEXIST", unix.EEXIST},
	{"ERANGE", unix.ERANGE}, {"EOVERFLOW", unix.EOVERFLOW}, {"EBUSY", unix.EBUSY},
	{"ENOTDIR", unix.ENOTDIR}, {"ENOTEMPTY", unix.ENOTEMPTY}, {"ESHUTDOWN", unix.ESHUTDOWN},
	{"EFAULT", unix.EFAULT},
}

// ext4ErrorName names an ext4 error code by the errno it stands for.
func ext4ErrorName(code int) string {
	if code >= 0 && code < len(ext4Codes) {
		return ext4Codes[code].name
	}
	return "code " + strconv.Itoa(code)
}

// Ext4CodeErrno is the errno an ext4 error code (sysfs *_errcode) stands
// for, 0 for none or one it does not know.
func Ext4CodeErrno(code int) unix.Errno {
	if code >= 0 && code < len(ext4Codes) {
		return ext4Codes[code].errno
	}
	return 0
}
