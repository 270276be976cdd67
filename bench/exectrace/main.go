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

	"github.com/snugfs/snug/internal/urgent"
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
	fd, err := urgent.ListenProcEvents(100 * time.Millisecond)
	if err != nil {
		return err
	}
	defer urgent.StopProcEvents(fd)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	// On a busy host a reader at the default priority falls behind,
	// and a short-lived program is gone before its name is read: the
	// reading and the naming run on one thread, at nice -20.
	runtime.LockOSThread()
	_ = unix.Setpriority(unix.PRIO_PROCESS, 0, -20)
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

// record writes the execs and exits of interest in one read of the socket.
func record(w *bufio.Writer, buf []byte, tracked map[int]string, skip string, offset time.Duration) {
	for _, ev := range urgent.ParseProcEvents(buf) {
		now := time.Unix(0, 0).Add(offset + ev.At).UTC().Format("2006-01-02T15:04:05.000000Z")
		switch {
		case !ev.Exit:
			line, ok := describe(ev.TGID)
			if !ok || skip != "" && strings.Contains(line, skip) {
				continue
			}
			tracked[ev.TGID] = line
			fmt.Fprintf(w, "%s exec %d [%s] %s\n", now, ev.TGID, cpuCgroup(ev.TGID), line)
		case ev.PID == ev.TGID:
			if line, ok := tracked[ev.TGID]; ok {
				delete(tracked, ev.TGID)
				fmt.Fprintf(w, "%s exit %d %.60s\n", now, ev.TGID, line)
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
