package differ

import (
	"errors"
	"io"
	"sync"
)

// readAhead reads a stream in a goroutine of its own, in large chunks,
// ahead of its reader, passing every byte to a side writer first (the
// hash of the diff ID). Decompressing and hashing then run beside the
// writer of the layer image instead of in lock-step with it: an io.Pipe
// hands over each piece the decompressor writes (32 KiB) with two goroutine
// switches, which on a paravirtualized VM cost as much as the copying.
type readAhead struct {
	chunks chan []byte // full chunks, in order; closed after the last
	free   chan []byte // chunks read, for the producer to fill again
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once

	cur   []byte // what is left of the chunk being read
	whole []byte // that chunk, to hand back
	err   error  // the producer's error, once chunks is closed
	n     int64  // bytes read from the stream (the producer's; read after done)
}

// Chunk size and count: 4 MiB in flight at most.
const (
	aheadChunk  = 1 << 20
	aheadChunks = 4
)

// newReadAhead starts reading r, writing each chunk to side before it is
// handed on. Close must be called.
func newReadAhead(r io.Reader, side io.Writer) *readAhead {
	a := &readAhead{
		chunks: make(chan []byte, aheadChunks),
		free:   make(chan []byte, aheadChunks+1),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	for range aheadChunks + 1 {
		a.free <- make([]byte, aheadChunk)
	}
	go a.produce(r, side)
	return a
}

func (a *readAhead) produce(r io.Reader, side io.Writer) {
	defer close(a.done)
	defer close(a.chunks)
	for {
		var buf []byte
		select {
		case buf = <-a.free:
		case <-a.stop:
			a.err = errReadAheadClosed
			return
		}
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			a.n += int64(n)
			if _, werr := side.Write(buf[:n]); werr != nil {
				a.err = werr
				return
			}
			select {
			case a.chunks <- buf[:n]:
			case <-a.stop:
				a.err = errReadAheadClosed
				return
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			a.err = io.EOF
			return
		}
		if err != nil {
			a.err = err
			return
		}
	}
}

var errReadAheadClosed = errors.New("read ahead: closed")

// Read reads what the producer read; at the end, its error (io.EOF when
// the stream ended).
func (a *readAhead) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(a.cur) == 0 {
		if a.whole != nil {
			a.free <- a.whole[:cap(a.whole)]
			a.whole = nil
		}
		buf, ok := <-a.chunks
		if !ok {
			return 0, a.err // set before chunks was closed
		}
		a.cur, a.whole = buf, buf
	}
	n := copy(p, a.cur)
	a.cur = a.cur[n:]
	return n, nil
}

// Close stops the producer and waits for it; it returns the number of
// bytes read from the stream and the producer's error, nil if the stream
// was read to its end.
func (a *readAhead) Close() (int64, error) {
	a.once.Do(func() { close(a.stop) })
	<-a.done
	if errors.Is(a.err, io.EOF) {
		return a.n, nil
	}
	return a.n, a.err
}
