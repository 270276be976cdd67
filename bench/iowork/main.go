// Command iowork runs the in-container workloads of make bench-io and the
// durability test (package internal/iowork). Every result is one line of
// JSON on stdout.
//
//	iowork meta DIR N         the small-file workload: files per second
//	iowork durable DIR ACKS   fsync'd records, acknowledged in ACKS, until killed
//	iowork time CMD ARGS...   runs CMD and prints its wall time
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/snugfs/snug/internal/iowork"
)

func main() {
	args := os.Args[1:]
	var (
		out any
		err error
	)
	switch {
	case len(args) == 3 && args[0] == "meta":
		n, perr := strconv.Atoi(args[2])
		if perr != nil {
			fail(fmt.Errorf("meta: N is %q, want a number", args[2]))
		}
		out, err = iowork.Meta(args[1], n)
	case len(args) == 3 && args[0] == "durable":
		err = iowork.Durable(args[1], args[2], 0)
	case len(args) >= 2 && args[0] == "time":
		cmd := exec.Command(args[1], args[2:]...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stderr, os.Stderr
		start := time.Now()
		err = cmd.Run()
		out = map[string]float64{"seconds": time.Since(start).Seconds()}
	default:
		fmt.Fprintln(os.Stderr, "usage: iowork meta DIR N | durable DIR ACKS | time CMD [ARGS...]")
		os.Exit(2)
	}
	if err != nil {
		fail(err)
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "iowork:", err)
	os.Exit(1)
}
