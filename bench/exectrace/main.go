// Command exectrace logs, with microsecond timestamps, every exec on the
// host of the programs that start and stop containers (containerd's
// shims, runc and its init, snug's own binaries, sh) and their exits, from
// the kernel's process events connector (netlink, CONFIG_PROC_EVENTS;
// root). Each exec line carries the process's CPU cgroup when it
// exec'd. bench/exec-timeline.py reads the log: how long each step of a
// container's restart took under load (docs/benchmarks.md).
//
//	exectrace [-skip SUBSTRING] LOGFILE   (until SIGINT or SIGTERM)
package main

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The process events connector (include/uapi/linux/cn_proc.h).
const (
	cnIdxProc         = 1
	cnValProc         = 1
	procCnMcastListen = 1
	procEventExec     = 0x00000002
	procEventExit     = 0x80000000
	nlmsgHeaderLen    = 16
	cnMsgLen          = 20
	eventHeaderLen    = 16
)

func main() {
	skip := flag.String("skip", "", "leave out the execs whose command line holds this")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: exectrace [-skip SUBSTRING] LOGFILE")
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *skip); err != nil {
		fmt.Fprintln(os.Stderr, "exectrace:", err)
		os.Exit(1)
	}
}

func run(path, skip string) error {
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(out)
	fd, err := listen()
	if err != nil {
		return err
	}
	// On a busy host a reader at the default priority falls behind,
	// and a short-lived program is gone before its name is read: the
	// reading and the naming run on one thread, at nice -20.
	runtime.LockOSThread()
	_ = unix.Setpriority(unix.PRIO_PROCESS, 0, -20)
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	done := make(chan os.Signal, 1)
	signal.Notify(done, os.Interrupt, syscall.SIGTERM)
	// The events carry the kernel's monotonic clock: the log says when
	// each happened, not when it was read.
	var mono unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono); err != nil {
		return err
	}
	offset := time.Now().UTC().Sub(time.Unix(0, 0)) - time.Duration(mono.Nano())
	tracked := map[int]string{}
	buf := make([]byte, 64<<10)
	for {
		select {
		case <-done:
			if err := w.Flush(); err != nil {
				return err
			}
			return out.Close()
		default:
		}
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			continue // EAGAIN: the timeout; ENOBUFS: events lost to an overflow
		}
		record(w, buf[:n], tracked, skip, offset)
	}
}

// listen subscribes to the process events.
func listen() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_CONNECTOR)
	if err != nil {
		return -1, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: cnIdxProc}); err != nil {
		return -1, err
	}
	msg := make([]byte, nlmsgHeaderLen+cnMsgLen+4)
	le := binary.NativeEndian
	le.PutUint32(msg[0:], uint32(len(msg)))
	le.PutUint16(msg[4:], unix.NLMSG_DONE)
	le.PutUint32(msg[12:], uint32(os.Getpid()))
	le.PutUint32(msg[nlmsgHeaderLen:], cnIdxProc)
	le.PutUint32(msg[nlmsgHeaderLen+4:], cnValProc)
	le.PutUint16(msg[nlmsgHeaderLen+16:], 4)
	le.PutUint32(msg[nlmsgHeaderLen+cnMsgLen:], procCnMcastListen)
	return fd, unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
}

// record writes the execs and exits of interest in one read of the socket.
func record(w *bufio.Writer, buf []byte, tracked map[int]string, skip string, offset time.Duration) {
	msgs, err := syscall.ParseNetlinkMessage(buf)
	if err != nil {
		return
	}
	le := binary.NativeEndian
	for _, m := range msgs {
		d := m.Data
		if len(d) < cnMsgLen+eventHeaderLen+8 {
			continue
		}
		ev := d[cnMsgLen:]
		at := time.Unix(0, 0).Add(offset + time.Duration(le.Uint64(ev[8:]))).UTC()
		now := at.Format("2006-01-02T15:04:05.000000Z")
		pid := int(le.Uint32(ev[eventHeaderLen:]))
		tgid := int(le.Uint32(ev[eventHeaderLen+4:]))
		switch le.Uint32(ev[0:]) {
		case procEventExec:
			line, ok := describe(tgid)
			if !ok || skip != "" && strings.Contains(line, skip) {
				continue
			}
			tracked[tgid] = line
			fmt.Fprintf(w, "%s exec %d [%s] %s\n", now, tgid, cpuCgroup(tgid), line)
		case procEventExit:
			if line, ok := tracked[tgid]; ok && pid == tgid {
				delete(tracked, tgid)
				fmt.Fprintf(w, "%s exit %d %.60s\n", now, tgid, line)
			}
		}
	}
}

// describe is the command line of pid, on one line and cut at 1000
// bytes, when it is a program of interest.
func describe(pid int) (string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(b) == 0 {
		return "", false
	}
	argv := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	base := filepath.Base(argv[0])
	if !strings.HasPrefix(base, "containerd-shim") && !strings.Contains(base, "runc") &&
		!strings.HasPrefix(base, "snug") && base != "sh" {
		return "", false
	}
	line := strings.Join(strings.Fields(strings.Join(argv, " ")), " ")
	if len(line) > 1000 {
		line = line[:1000]
	}
	return line, true
}

// cpuCgroup is pid's cgroup in the CPU controller's hierarchy (v1), or
// its cgroup (v2).
func cpuCgroup(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	for _, l := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) == 3 && (parts[0] == "0" || strings.Contains(","+parts[1]+",", ",cpu,")) {
			return parts[2]
		}
	}
	return "?"
}
