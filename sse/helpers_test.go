package sse_test

import (
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/pushproxy/pushproxy/sse"
)

// result is everything observable from parsing one stream to its end.
type result struct {
	Events   []sse.Event
	Err      error // the error that ended the stream
	LastID   string
	Retry    int64
	HasRetry bool
}

func (r result) String() string {
	return fmt.Sprintf("events=%q err=%v lastID=%q retry=%d,%v", r.Events, r.Err, r.LastID, r.Retry, r.HasRetry)
}

// parseAll parses r to its end (at most 100,000 events, to stop runaway tests).
func parseAll(r io.Reader, initialID string, opts *sse.ParserOptions) result {
	p := sse.NewParser(r, opts)
	if initialID != "" {
		p.SetLastEventID(initialID)
	}
	var res result
	for range 1000000 {
		ev, err := p.Next()
		if err == sse.ErrPending {
			// The reader will have more: the parser waits without its buffer, or is
			// dropped and resumed when it is between events.
			p.Release()
			if st, ok := p.Suspend(); ok {
				p = sse.Resume(r, opts, st)
			}
			continue
		}
		if err != nil {
			res.Err = err
			break
		}
		res.Events = append(res.Events, ev)
	}
	res.LastID = p.LastEventID()
	res.Retry, res.HasRetry = p.Retry()
	// A second call returns the same (sticky) error.
	if _, err := p.Next(); !errors.Is(err, res.Err) {
		res.Err = fmt.Errorf("second Next returned %v after %v", err, res.Err)
	}
	return res
}

func equalResults(a, b result) bool {
	return reflect.DeepEqual(a.Events, b.Events) && a.Err == b.Err && a.LastID == b.LastID &&
		a.Retry == b.Retry && a.HasRetry == b.HasRetry
}

// chunkReader returns its chunks one Read at a time.
type chunkReader struct{ chunks [][]byte }

func (c *chunkReader) Read(p []byte) (int, error) {
	for len(c.chunks) > 0 && len(c.chunks[0]) == 0 {
		c.chunks = c.chunks[1:]
	}
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.chunks[0])
	c.chunks[0] = c.chunks[0][n:]
	return n, nil
}

// pendingReader answers sse.ErrPending before every read of r: a stream fed from a buffer
// that is often empty.
type pendingReader struct {
	r       io.Reader
	pending bool
}

func (p *pendingReader) Read(b []byte) (int, error) {
	if p.pending = !p.pending; p.pending {
		return 0, sse.ErrPending
	}
	return p.r.Read(b)
}

func chunks(s string, at ...int) io.Reader {
	c := &chunkReader{}
	prev := 0
	for _, i := range at {
		c.chunks = append(c.chunks, []byte(s[prev:i]))
		prev = i
	}
	c.chunks = append(c.chunks, []byte(s[prev:]))
	return c
}

// readers returns the ways tests feed a stream to the parser: whole, in
// every split into two reads, byte by byte, and with a few iotest readers.
func readers(s string) map[string]func() io.Reader {
	m := map[string]func() io.Reader{
		"whole":    func() io.Reader { return strings.NewReader(s) },
		"onebyte":  func() io.Reader { return iotest.OneByteReader(strings.NewReader(s)) },
		"half":     func() io.Reader { return iotest.HalfReader(strings.NewReader(s)) },
		"dataerr":  func() io.Reader { return iotest.DataErrReader(strings.NewReader(s)) },
		"dataerr1": func() io.Reader { return iotest.DataErrReader(iotest.OneByteReader(strings.NewReader(s))) },
		"pending":  func() io.Reader { return &pendingReader{r: iotest.HalfReader(strings.NewReader(s))} },
		"pending1": func() io.Reader { return &pendingReader{r: iotest.OneByteReader(strings.NewReader(s))} },
	}
	step := 1
	if len(s) > 512 {
		step = len(s) / 97 // keep long inputs fast; still hits many offsets
	}
	for i := 1; i < len(s); i += step {
		m[fmt.Sprintf("split@%d", i)] = func() io.Reader { return chunks(s, i) }
	}
	return m
}

// checkAllReaders parses s every way readers offers and checks each result
// against want.
func checkAllReaders(t *testing.T, s, initialID string, opts *sse.ParserOptions, want result) {
	t.Helper()
	for name, mk := range readers(s) {
		if got := parseAll(mk(), initialID, opts); !equalResults(got, want) {
			t.Errorf("%s:\n got %v\nwant %v\ninput %q", name, got, want, s)
			return
		}
	}
}

var errEOF = io.EOF
