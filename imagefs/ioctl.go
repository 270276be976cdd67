package imagefs

import (
	"encoding/binary"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl numbers that golang.org/x/sys/unix does not define, from
// include/uapi/linux/fs.h.
const (
	ioctlFITRIM   = 0xc0185879 // _IOWR('X', 121, struct fstrim_range)
	ioctlFIEMAP   = 0xc020660b // _IOWR('f', 11, struct fiemap)
	ioctlFIFREEZE = 0xc0045877 // _IOWR('X', 119, int)
	ioctlFITHAW   = 0xc0045878 // _IOWR('X', 120, int)
	// ioctlShutdown is EXT4_IOC_SHUTDOWN (_IOR('X', 125, __u32), also
	// FS_IOC_SHUTDOWN), from fs/ext4/ext4.h; its argument is how.
	ioctlShutdown = 0x8004587d
	// shutdownNoLogFlush stops the filesystem without writing its dirty
	// data or its journal (EXT4_GOING_FLAGS_NOLOGFLUSH).
	shutdownNoLogFlush = 2
)

// ioctlBuf calls an ioctl whose argument is a buffer the kernel reads and
// writes. The buffer is laid out and decoded with encoding/binary by the
// caller; only its address crosses into the kernel.
func ioctlBuf(f *os.File, req uintptr, buf []byte) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno unix.Errno
	if cerr := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(unsafe.Pointer(&buf[0])))
	}); cerr != nil {
		return cerr
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// fitrim discards every free block of the mounted filesystem holding dir, so
// that the loop device punches them out of the image file. It returns the
// number of bytes the kernel trimmed.
func fitrim(dir string) (int64, error) {
	f, err := os.Open(dir)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 24) // struct fstrim_range { u64 start, len, minlen }
	binary.LittleEndian.PutUint64(buf[8:], ^uint64(0))
	if err := ioctlBuf(f, ioctlFITRIM, buf); err != nil {
		return 0, fmt.Errorf("FITRIM %s: %w", dir, err)
	}
	return int64(binary.LittleEndian.Uint64(buf[8:])), nil
}

// freeze and thaw a mounted filesystem (FIFREEZE/FITHAW): a frozen
// filesystem has its journal checkpointed and blocks all writers.
func freeze(dir string) error { return freezeOp(dir, ioctlFIFREEZE, "FIFREEZE") }
func thaw(dir string) error   { return freezeOp(dir, ioctlFITHAW, "FITHAW") }

func freezeOp(dir string, req uintptr, name string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := ioctlBuf(f, req, make([]byte, 4)); err != nil {
		return fmt.Errorf("%s %s: %w", name, dir, err)
	}
	return nil
}
