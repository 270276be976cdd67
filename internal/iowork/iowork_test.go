package iowork

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// crashImage lays out what Durable leaves: records 0..records-1 in the
// log (then tail, e.g. a torn record), a file at every FileEvery-th record
// except those in missingFiles, and acks 0..acked-1.
func crashImage(t *testing.T, records, acked int, tail string, missingFiles ...int) (dir, acks string) {
	t.Helper()
	dir = t.TempDir()
	var log strings.Builder
	for i := range records {
		log.WriteString(Record(i))
		if i%FileEvery == 0 && !contains(missingFiles, i) {
			if err := os.WriteFile(filepath.Join(dir, fileName(i)), []byte(fileContent(i)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	log.WriteString(tail)
	if err := os.WriteFile(filepath.Join(dir, LogName), []byte(log.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	var a strings.Builder
	for i := range acked {
		a.WriteString(strconv.Itoa(i) + "\n")
	}
	acks = filepath.Join(t.TempDir(), "acks")
	if err := os.WriteFile(acks, []byte(a.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, acks
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestVerify(t *testing.T) {
	for _, tc := range []struct {
		name           string
		records, acked int
		tail           string
		missing        []int
		lost           bool
	}{
		{name: "everything acknowledged is there", records: 100, acked: 100},
		{name: "unacknowledged records beyond the last ack", records: 130, acked: 100},
		{name: "a torn record after the acknowledged ones", records: 100, acked: 100, tail: "record 000001"},
		{name: "an acknowledged record lost", records: 99, acked: 100, lost: true},
		{name: "an acknowledged record torn", records: 99, acked: 100, tail: Record(99)[:20], lost: true},
		{name: "an acknowledged file lost", records: 100, acked: 100, missing: []int{50}, lost: true},
		{name: "the file of an unacknowledged record missing", records: 100, acked: 75, missing: []int{75}},
		{name: "nothing acknowledged", records: 0, acked: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, acks := crashImage(t, tc.records, tc.acked, tc.tail, tc.missing...)
			v, err := Verify(dir, acks)
			if tc.lost != errors.Is(err, ErrLost) {
				t.Fatalf("Verify = %+v, %v; want lost=%v", v, err, tc.lost)
			}
			if !tc.lost && (err != nil || v.Acked != tc.acked || v.Records != tc.records) {
				t.Fatalf("Verify = %+v, %v; want %d acked, %d records", v, err, tc.acked, tc.records)
			}
		})
	}
}

func TestVerifyNoLog(t *testing.T) {
	acks := filepath.Join(t.TempDir(), "acks")
	os.WriteFile(acks, []byte("0\n1\n"), 0o644)
	if _, err := Verify(t.TempDir(), acks); !errors.Is(err, ErrLost) {
		t.Fatalf("Verify of a directory without the log = %v, want ErrLost", err)
	}
}

func TestVerifyDamagedAcks(t *testing.T) {
	dir, acks := crashImage(t, 10, 10, "")
	os.WriteFile(acks, []byte("0\n2\n"), 0o644)
	if _, err := Verify(dir, acks); err == nil || errors.Is(err, ErrLost) {
		t.Fatalf("Verify with acks out of order = %v, want an error that is not ErrLost", err)
	}
}

// TestDurableThenVerify runs the writer for real: what it acknowledged,
// Verify finds, files included.
func TestDurableThenVerify(t *testing.T) {
	dir := t.TempDir()
	acks := filepath.Join(t.TempDir(), "acks")
	if err := Durable(dir, acks, 60); err != nil {
		t.Fatal(err)
	}
	v, err := Verify(dir, acks)
	if err != nil || v.Acked != 60 || v.Records != 60 || v.Files != 3 {
		t.Fatalf("Verify = %+v, %v; want 60 records and 3 files", v, err)
	}
	if err := Durable(dir, acks, 1); err == nil {
		t.Fatal("Durable wrote over an existing log")
	}
}

func TestMeta(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "meta")
	res, err := Meta(dir, 40)
	if err != nil {
		t.Fatal(err)
	}
	if res.Files != 40 || res.FilesPerSecond <= 0 {
		t.Fatalf("Meta = %+v", res)
	}
	left, _ := os.ReadDir(dir)
	if len(left) != 0 {
		t.Fatalf("Meta left %d files", len(left))
	}
	if _, err := Meta(dir, 0); err == nil {
		t.Fatal("Meta of 0 files succeeded")
	}
}
