package sse_test

import (
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/pushproxy/pushproxy/sse"
)

// genReader yields head, then fill repeated (forever if n < 0, else n
// bytes), then tail, counting the bytes it hands out.
type genReader struct {
	head, tail string
	fill       string
	n          int64
	read       int64
	fillOff    int
}

func (g *genReader) Read(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		switch {
		case g.head != "":
			k := copy(p, g.head)
			g.head = g.head[k:]
			p, total = p[k:], total+k
		case g.n != 0:
			if len(g.fill) < 4096 {
				g.fill = strings.Repeat(g.fill, 4096/len(g.fill)+1)
			}
			k := 0
			for k < len(p) && g.n != 0 {
				c := copy(p[k:], g.fill[g.fillOff:])
				if g.n > 0 && int64(c) > g.n {
					c = int(g.n)
				}
				g.fillOff = (g.fillOff + c) % len(g.fill)
				k += c
				if g.n > 0 {
					g.n -= int64(c)
				}
			}
			p, total = p[k:], total+k
		case g.tail != "":
			k := copy(p, g.tail)
			g.tail = g.tail[k:]
			p, total = p[k:], total+k
		default:
			g.read += int64(total)
			if total == 0 {
				return 0, io.EOF
			}
			return total, nil
		}
	}
	g.read += int64(total)
	return total, nil
}

func TestEndlessLineIsTooLarge(t *testing.T) {
	for _, max := range []int{256, 64 << 10, sse.DefaultMaxEventSize} {
		for _, head := range []string{"data: ", "event:", "id:", "retry:", "data: a\n\ndata: "} {
			g := &genReader{head: head, fill: "x", n: -1}
			if head == "retry:" {
				g.fill = "0"
			}
			p := sse.NewParser(g, &sse.ParserOptions{MaxEventSize: max})
			var err error
			for err == nil {
				_, err = p.Next()
			}
			if err != sse.ErrEventTooLarge {
				t.Fatalf("max %d, %q...: Next = %v, want ErrEventTooLarge", max, head, err)
			}
			if limit := int64(2*max + sse.BufSize); g.read < int64(max) || g.read >= limit {
				t.Errorf("max %d, %q...: read %d bytes before the error, want [%d, %d)", max, head, g.read, max, limit)
			}
			if held := p.Held(); held > 2*max+sse.BufSize {
				t.Errorf("max %d, %q...: holds %d bytes", max, head, held)
			}
		}
	}
}

func TestEndlessDataLinesAreTooLarge(t *testing.T) {
	const max = 64 << 10
	g := &genReader{head: "event: big\n", fill: "data: " + strings.Repeat("y", 100) + "\n", n: -1}
	p := sse.NewParser(g, &sse.ParserOptions{MaxEventSize: max})
	if _, err := p.Next(); err != sse.ErrEventTooLarge {
		t.Fatalf("Next = %v, want ErrEventTooLarge", err)
	}
	if g.read >= 2*max+sse.BufSize {
		t.Errorf("read %d bytes before the error", g.read)
	}
}

// TestIgnoredLinesAreSkipped checks that endless comments and lines of
// ignored fields stream by without being retained or limited.
func TestIgnoredLinesAreSkipped(t *testing.T) {
	const size = 16 << 20 // 16 MiB, 64 times MaxEventSize
	for _, head := range []string{":", ": ", "foo:", "foo", "Data: ", "data ", "data\x00:", "\uFEFFdata:", "retry2:"} {
		g := &genReader{head: "data: a\n" + head, fill: "0123456789", n: size, tail: "\ndata: b\n\n"}
		p := sse.NewParser(g, &sse.ParserOptions{MaxEventSize: 256 << 10})
		e, err := p.Next()
		if err != nil || e.Data != "a\nb" {
			t.Fatalf("%q...: Next = %v, %v", head, e, err)
		}
		if held := p.Held(); held > 1024 {
			t.Errorf("%q...: holds %d bytes after a %d-byte line", head, held, size)
		}
	}
}

// TestLargeEventBuffersReleased checks that one large event does not pin its
// buffer for the rest of the stream.
func TestLargeEventBuffersReleased(t *testing.T) {
	big := strings.Repeat("z", 512<<10)
	in := "data: " + big + "\n\ndata: small\n\n"
	p := sse.NewParser(strings.NewReader(in), nil)
	if e, err := p.Next(); err != nil || e.Data != big {
		t.Fatalf("Next = %v", err)
	}
	if e, err := p.Next(); err != nil || e.Data != "small" {
		t.Fatalf("Next = %q, %v", e.Data, err)
	}
	if held := p.Held(); held > 4*sse.BufSize {
		t.Errorf("holds %d bytes after a large event", held)
	}
}

// TestIgnoredLineMemory measures the allocations of skipping a long comment.
func TestIgnoredLineMemory(t *testing.T) {
	allocs := testing.AllocsPerRun(3, func() {
		g := &genReader{head: ":", fill: "x", n: 4 << 20, tail: "\ndata: ok\n\n"}
		p := sse.NewParser(g, &sse.ParserOptions{MaxEventSize: 1024})
		if e, err := p.Next(); err != nil || e.Data != "ok" {
			t.Fatalf("Next = %v, %v", e, err)
		}
	})
	// The parser, its read buffer, a data buffer and the event's string.
	if allocs > 6 {
		t.Errorf("%v allocations to skip a 4 MiB comment", allocs)
	}
}

// idleReader returns its chunks one per Read, like a live stream whose events
// arrive one by one. When they run out, it calls idle, at the point where the
// parser would wait for the stream, and then reports io.EOF.
type idleReader struct {
	chunks []string
	idle   func()
}

func (r *idleReader) Read(p []byte) (int, error) {
	if len(r.chunks) == 0 {
		if r.idle != nil {
			r.idle()
			r.idle = nil
		}
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	if r.chunks[0] = r.chunks[0][n:]; r.chunks[0] == "" {
		r.chunks = r.chunks[1:]
	}
	return n, nil
}

func smallEvent(i int) string {
	return fmt.Sprintf("id: %d\nevent: update\ndata: {\"id\":%d,\"user\":\"user-%d\",\"title\":\"Some title for item %d\",\"ok\":true}\n\n", 1000000+i, i, i%977, i)
}

// TestIdleParserMemory checks that a parser waiting on a quiet stream holds
// little memory (the proxy keeps tens of thousands of them): after small
// events, and after a burst once the stream has quietened down again.
func TestIdleParserMemory(t *testing.T) {
	const limit = 1024
	burst := ""
	for i := range 200 {
		burst += smallEvent(i)
	}
	for _, tc := range []struct {
		name   string
		chunks []string
		more   bool // followed by 40 small events, one per read
	}{
		{"one event", []string{smallEvent(1)}, false},
		{"small events", nil, true},
		{"keep-alives", []string{smallEvent(1), ":\n", ":\n", ":\n"}, false},
		{"after a burst", []string{burst}, true},
		{"partial event", []string{smallEvent(1), "id: 7\nevent: x\ndata: partial\n"}, false},
		{"partial line", []string{smallEvent(1), "id: 7\ndata: partial\ndata: more"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chunks := tc.chunks
			if tc.more {
				for i := range 40 {
					chunks = append(chunks, smallEvent(i))
				}
			}
			var p *sse.Parser
			held, bufCap := -1, -1
			r := &idleReader{chunks: chunks, idle: func() { held, bufCap = p.Footprint(), p.BufCap() }}
			p = sse.NewParser(r, nil)
			var events []sse.Event
			for {
				e, err := p.Next()
				if err != nil {
					break
				}
				events = append(events, e) // keep them: the parser must not depend on that
			}
			if len(events) == 0 {
				t.Fatal("no events")
			}
			if held < 0 {
				t.Fatal("the parser never waited for the stream")
			}
			t.Logf("%d events; waiting with %d bytes, read buffer %d", len(events), held, bufCap)
			if bufCap > sse.MinBufSize {
				t.Errorf("read buffer of %d bytes while waiting, want %d", bufCap, sse.MinBufSize)
			}
			if held > limit {
				t.Errorf("holds %d bytes while waiting, want at most %d", held, limit)
			}
		})
	}
}

// TestReadBufferGrows checks that the read buffer grows for a fast reader
// and for a long line, up to its largest size.
func TestReadBufferGrows(t *testing.T) {
	var in strings.Builder
	for i := range 1000 {
		in.WriteString(smallEvent(i))
	}
	in.WriteString("data: " + strings.Repeat("x", 3*sse.BufSize) + "\n\n")
	p := sse.NewParser(strings.NewReader(in.String()), nil)
	largest := 0
	for {
		if _, err := p.Next(); err != nil {
			break
		}
		largest = max(largest, p.BufCap())
	}
	if largest != sse.BufSize {
		t.Errorf("read buffer grew to %d bytes, want %d", largest, sse.BufSize)
	}
}
