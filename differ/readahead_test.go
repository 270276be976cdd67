package differ

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"time"
)

// TestReadAheadPassesTheStream reads streams of sizes around the chunk
// size through readAhead, with reads of several sizes: the reader gets the
// stream, the side writer every byte in order, and Close its length.
func TestReadAheadPassesTheStream(t *testing.T) {
	for _, size := range []int{0, 1, 511, aheadChunk - 1, aheadChunk, aheadChunk + 1, 3*aheadChunk + 7, (aheadChunks + 3) * aheadChunk} {
		for _, readSize := range []int{1 << 9, 32 << 10, 3 * aheadChunk} {
			data := make([]byte, size)
			rng := rand.New(rand.NewPCG(uint64(size), uint64(readSize)))
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			side := sha256.New()
			a := newReadAhead(bytes.NewReader(data), side)
			var got bytes.Buffer
			buf := make([]byte, readSize)
			for {
				n, err := a.Read(buf)
				got.Write(buf[:n])
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("size %d: %v", size, err)
				}
			}
			n, err := a.Close()
			if err != nil || n != int64(size) {
				t.Errorf("size %d, reads of %d: Close = %d, %v", size, readSize, n, err)
			}
			if !bytes.Equal(got.Bytes(), data) {
				t.Errorf("size %d, reads of %d: the stream changed (%d bytes read)", size, readSize, got.Len())
			}
			if want := sha256.Sum256(data); !bytes.Equal(side.Sum(nil), want[:]) {
				t.Errorf("size %d, reads of %d: the side writer did not see the stream", size, readSize)
			}
		}
	}
}

// failingReader returns n bytes, then err.
type failingReader struct {
	n   int
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, f.err
	}
	k := min(len(p), f.n)
	f.n -= k
	return k, nil
}

// endless never ends, slowly.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	time.Sleep(time.Millisecond)
	return len(p), nil
}

// TestReadAheadErrors: a stream that fails reaches the reader after the
// bytes before it and is Close's error; a side writer that fails ends the
// stream with its error; Close before the end stops the producer (no
// goroutine left blocked) and says so.
func TestReadAheadErrors(t *testing.T) {
	broken := errors.New("broken stream")
	a := newReadAhead(&failingReader{n: aheadChunk + 10, err: broken}, io.Discard)
	got, err := io.Copy(io.Discard, a)
	if !errors.Is(err, broken) || got != aheadChunk+10 {
		t.Errorf("read %d bytes, error %v; want %d and the stream's error", got, err, aheadChunk+10)
	}
	if _, err := a.Close(); !errors.Is(err, broken) {
		t.Errorf("Close = %v", err)
	}

	sideErr := errors.New("side full")
	a = newReadAhead(bytes.NewReader(make([]byte, 10)), errWriter{sideErr})
	if _, err := io.Copy(io.Discard, a); !errors.Is(err, sideErr) {
		t.Errorf("side writer's error not passed on: %v", err)
	}
	a.Close()

	a = newReadAhead(endless{}, io.Discard)
	if _, err := a.Read(make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := a.Close(); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("Close before the end of the stream returned no error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not stop the producer")
	}
}

type errWriter struct{ err error }

func (w errWriter) Write([]byte) (int, error) { return 0, w.err }
