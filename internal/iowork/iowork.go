// Package iowork holds the I/O workloads that run inside containers for
// make bench-io (Meta) and the durability test (Durable, Verify). The
// command bench/iowork runs them; it is built static and bind mounted into
// the container, so it needs nothing from the image.
//
// Durable is the contract an fsync'd write makes: it acknowledges a record
// (writes its number to a file outside the container's storage) only after
// the record, and every 25th record a new file and its directory entry,
// were fsync'd. Verify then reads a crash image of the container's storage
// and reports every acknowledged record or file that is missing or torn.
package iowork

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// MetaResult is what Meta measured.
type MetaResult struct {
	Files          int     `json:"files"`
	Seconds        float64 `json:"seconds"`
	FilesPerSecond float64 `json:"files_per_second"`
}

// metaKeep is how many files Meta keeps before it unlinks the oldest.
const metaKeep = 16

// Meta is the small-file pattern of a package install or a git clone: it
// creates n files in dir, each written (4 KiB), fsync'd and closed on its
// own, unlinks each one metaKeep files later, and fsyncs dir at the end.
func Meta(dir string, n int) (MetaResult, error) {
	if n <= 0 {
		return MetaResult{}, fmt.Errorf("meta: %d files", n)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return MetaResult{}, err
	}
	block := bytes.Repeat([]byte("snug"), 1024)
	name := func(i int) string { return filepath.Join(dir, "f"+strconv.Itoa(i)) }
	start := time.Now()
	for i := 0; i < n; i++ {
		if err := writeSynced(name(i), block); err != nil {
			return MetaResult{}, err
		}
		if i >= metaKeep {
			if err := os.Remove(name(i - metaKeep)); err != nil {
				return MetaResult{}, err
			}
		}
	}
	if err := syncDir(dir); err != nil {
		return MetaResult{}, err
	}
	secs := time.Since(start).Seconds()
	for i := max(0, n-metaKeep); i < n; i++ {
		os.Remove(name(i))
	}
	return MetaResult{Files: n, Seconds: secs, FilesPerSecond: float64(n) / secs}, nil
}

// LogName is the file Durable appends its records to.
const LogName = "log"

// FileEvery is how often Durable makes a new file: at every record whose
// number is a multiple of it.
const FileEvery = 25

// Record is record i of the log: fixed width, so a torn or missing record
// is told from a whole one.
func Record(i int) string {
	return fmt.Sprintf("record %08d 0123456789abcdef0123456789abcdef0123456789abcdef\n", i)
}

func fileName(i int) string { return "file-" + strconv.Itoa(i) }

func fileContent(i int) string { return fmt.Sprintf("file made at record %d\n", i) }

// Durable appends n records (n <= 0: until an error, or the process is
// killed) to dir/log, each one fsync'd; at every FileEvery-th record it also makes a
// file, fsyncs it and fsyncs dir. Only then does it append the record's
// number to acks, which must be on storage that outlives the crash under
// test.
func Durable(dir, acks string, n int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	log, err := os.OpenFile(filepath.Join(dir, LogName), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	ack, err := os.OpenFile(acks, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer ack.Close()
	for i := 0; n <= 0 || i < n; i++ {
		if _, err := log.WriteString(Record(i)); err != nil {
			return err
		}
		if err := log.Sync(); err != nil {
			return err
		}
		if i%FileEvery == 0 {
			if err := writeSynced(filepath.Join(dir, fileName(i)), []byte(fileContent(i))); err != nil {
				return err
			}
			if err := syncDir(dir); err != nil {
				return err
			}
		}
		if _, err := ack.WriteString(strconv.Itoa(i) + "\n"); err != nil {
			return err
		}
	}
	return nil
}

// Verified is what Verify found.
type Verified struct {
	// Acked is the number of records acknowledged (0 .. Acked-1).
	Acked int
	// Records is the number of whole records at the start of the log.
	Records int
	// Files is the number of acknowledged files found whole.
	Files int
}

// ErrLost is returned by Verify when an acknowledged write is not in the
// crash image.
var ErrLost = errors.New("acknowledged write lost")

// Verify checks dir, the container's directory as a crash image holds it,
// against the acknowledgements in acks: every acknowledged record must be
// in the log, whole and in order, and every acknowledged file must be
// there with its content. Records written after the last acknowledgement
// may or may not be there; a torn record after the acknowledged ones is
// what a crash leaves and is not an error.
func Verify(dir, acks string) (Verified, error) {
	var v Verified
	a, err := os.ReadFile(acks)
	if err != nil {
		return v, err
	}
	for _, line := range strings.Split(strings.TrimSuffix(string(a), "\n"), "\n") {
		if line == "" {
			continue
		}
		n, err := strconv.Atoi(line)
		if err != nil || n != v.Acked {
			return v, fmt.Errorf("%s: acknowledgement %d is %q: the writer's own file is damaged", acks, v.Acked, line)
		}
		v.Acked++
	}
	f, err := os.Open(filepath.Join(dir, LogName))
	if err != nil {
		if v.Acked > 0 {
			return v, fmt.Errorf("%w: %d records acknowledged, no log: %v", ErrLost, v.Acked, err)
		}
		return v, nil
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var problems []string
	for {
		line, err := r.ReadString('\n')
		if err != nil || line != Record(v.Records) {
			break
		}
		v.Records++
	}
	if v.Records < v.Acked {
		problems = append(problems, fmt.Sprintf("log holds %d whole records, %d were acknowledged", v.Records, v.Acked))
	}
	for i := 0; i < v.Acked; i += FileEvery {
		b, err := os.ReadFile(filepath.Join(dir, fileName(i)))
		if err != nil || string(b) != fileContent(i) {
			problems = append(problems, fmt.Sprintf("%s: %q %v", fileName(i), b, err))
			continue
		}
		v.Files++
	}
	if len(problems) > 0 {
		return v, fmt.Errorf("%w: %s", ErrLost, strings.Join(problems, "; "))
	}
	return v, nil
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
