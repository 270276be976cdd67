package urgent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"
)

// ExecWatch moves into Cgroup every process of root's that execs, while
// it runs, with arguments its matcher picks: the programs containerd runs
// for a repaired container's task (containerd-shim-runc-v2's start and delete
// helpers, and the runc they run), which start as containerd's children
// at containerd's priority. It learns of each exec from the kernel's
// process events connector (netlink, CONFIG_PROC_EVENTS), and moves the
// process as soon as it has read its arguments; what the process forks
// after that inherits the cgroup.
type ExecWatch struct {
	fd      int
	match   func(argv []string) bool
	stop    chan struct{}
	stopped chan struct{}
	once    sync.Once
	raised  []int // written by the watch's goroutine only; read after stopped
}

// Linux's process events connector (include/uapi/linux/cn_proc.h,
// connector.h).
const (
	cnIdxProc           = 1
	cnValProc           = 1
	procCnMcastListen   = 1
	procCnMcastIgnore   = 2
	procEventExec       = 0x00000002
	procEventExit       = 0x80000000
	nlmsgHeaderLen      = 16
	cnMsgLen            = 20
	procEventHeaderLen  = 16 // what, cpu, timestamp_ns
	execWatchRecvBuffer = 1 << 20
	// execWatchPoll bounds how long Stop waits for the watch's read.
	execWatchPoll = 50 * time.Millisecond
)

// WatchExecs starts an ExecWatch. It fails where the host has no CPU
// cgroup for urgent work, or no process events connector (or snug is not
// root: it needs CAP_NET_ADMIN).
func WatchExecs(match func(argv []string) bool) (*ExecWatch, error) {
	if _, err := setup(); err != nil {
		return nil, err
	}
	fd, err := ListenProcEvents(execWatchPoll)
	if err != nil {
		return nil, err
	}
	w := &ExecWatch{fd: fd, match: match, stop: make(chan struct{}), stopped: make(chan struct{})}
	go w.run()
	return w, nil
}

// Stop ends the watch and returns the processes it moved into Cgroup.
func (w *ExecWatch) Stop() []int {
	w.once.Do(func() {
		close(w.stop)
		<-w.stopped
		StopProcEvents(w.fd)
	})
	return w.raised
}

func (w *ExecWatch) run() {
	defer close(w.stopped)
	// The events are read on a busy host: the reader is urgent work
	// itself (its thread ends with it).
	Thread()
	buf := make([]byte, 64<<10)
	h, _ := setup()
	for {
		select {
		case <-w.stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(w.fd, buf, 0)
		if err != nil {
			// EAGAIN: the poll's timeout; ENOBUFS: events lost to
			// an overflow (a process missed runs at its priority).
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		for _, pid := range parseExecEvents(buf[:n]) {
			argv, err := cmdline(pid)
			if err != nil || !w.match(argv) {
				continue
			}
			if err := cgroups.WriteCgroupProc(h.dir(Cgroup), pid); err == nil {
				w.raised = append(w.raised, pid)
			}
		}
	}
}

// sendProcOp subscribes to (or leaves) the process events.
func sendProcOp(fd int, op uint32) error {
	msg := make([]byte, nlmsgHeaderLen+cnMsgLen+4)
	le := binary.NativeEndian
	le.PutUint32(msg[0:], uint32(len(msg)))         // nlmsg_len
	le.PutUint16(msg[4:], unix.NLMSG_DONE)          // nlmsg_type
	le.PutUint32(msg[12:], uint32(os.Getpid()))     // nlmsg_pid
	le.PutUint32(msg[nlmsgHeaderLen:], cnIdxProc)   // cb_id.idx
	le.PutUint32(msg[nlmsgHeaderLen+4:], cnValProc) // cb_id.val
	le.PutUint16(msg[nlmsgHeaderLen+16:], 4)        // len
	le.PutUint32(msg[nlmsgHeaderLen+cnMsgLen:], op) // enum proc_cn_mcast_op
	return unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
}

// ListenProcEvents returns a netlink socket subscribed to the kernel's
// process events (CONFIG_PROC_EVENTS; CAP_NET_ADMIN), each read of it
// bounded by poll (SO_RCVTIMEO: the read fails with EAGAIN). Read it with
// ParseProcEvents; close it with StopProcEvents.
func ListenProcEvents(poll time.Duration) (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_CONNECTOR)
	if err != nil {
		return -1, fmt.Errorf("process events: %w", err)
	}
	// A burst of containers starting execs hundreds of programs a
	// second; the events must not overflow the socket meanwhile.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, execWatchRecvBuffer)
	tv := unix.NsecToTimeval(poll.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("process events: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: cnIdxProc}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("process events: %w", err)
	}
	if err := sendProcOp(fd, procCnMcastListen); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("process events: %w", err)
	}
	return fd, nil
}

// StopProcEvents unsubscribes and closes a socket of ListenProcEvents.
func StopProcEvents(fd int) {
	_ = sendProcOp(fd, procCnMcastIgnore)
	unix.Close(fd)
}

// ProcEvent is an exec or an exit, as the process events connector
// reports it.
type ProcEvent struct {
	Exit      bool // an exit; else an exec
	PID, TGID int
	// At is when it happened, on the kernel's monotonic clock
	// (CLOCK_MONOTONIC).
	At time.Duration
}

// ParseProcEvents returns the execs and exits in buf, one read of the
// connector's socket: netlink messages, each a connector message holding
// one process event.
func ParseProcEvents(buf []byte) []ProcEvent {
	msgs, err := syscall.ParseNetlinkMessage(buf)
	if err != nil {
		return nil
	}
	var evs []ProcEvent
	le := binary.NativeEndian
	for _, m := range msgs {
		d := m.Data
		if len(d) < cnMsgLen+procEventHeaderLen+8 {
			continue
		}
		if le.Uint32(d[0:]) != cnIdxProc || le.Uint32(d[4:]) != cnValProc {
			continue
		}
		if n := int(le.Uint16(d[16:])); n < procEventHeaderLen+8 || cnMsgLen+n > len(d) {
			continue
		}
		ev := d[cnMsgLen:]
		what := le.Uint32(ev[0:])
		if what != procEventExec && what != procEventExit {
			continue
		}
		// exec's and exit's data start alike: pid, tgid.
		evs = append(evs, ProcEvent{
			Exit: what == procEventExit,
			PID:  int(int32(le.Uint32(ev[procEventHeaderLen:]))),
			TGID: int(int32(le.Uint32(ev[procEventHeaderLen+4:]))),
			At:   time.Duration(le.Uint64(ev[8:])),
		})
	}
	return evs
}

// parseExecEvents returns the pids (thread group ids) of the execs in buf.
func parseExecEvents(buf []byte) []int {
	var pids []int
	for _, ev := range ParseProcEvents(buf) {
		if !ev.Exit && ev.TGID > 0 {
			pids = append(pids, ev.TGID)
		}
	}
	return pids
}

// cmdline is process pid's arguments, for a process of root's only: any
// user can run a program with a shim's arguments, and only root's are
// containerd's.
func cmdline(pid int) ([]string, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return nil, err
	}
	if st.Uid != 0 {
		return nil, fmt.Errorf("process %d is not root's", pid)
	}
	b, err := os.ReadFile(dir + "/cmdline")
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"), nil
}
