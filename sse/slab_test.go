package sse_test

import (
	"bytes"
	"hash/crc32"
	"io"
	"strings"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/pushproxy/pushproxy/sse"
)

// TestEventsOutliveParsing hands each event to another goroutine, which
// reads it while the parser goes on cutting later events from the same
// slab: run with -race, this checks that no byte handed out is written
// again. The events must also still be intact at the end.
func TestEventsOutliveParsing(t *testing.T) {
	var in bytes.Buffer
	for i := range 3000 {
		in.WriteString(smallEvent(i))
		if i%7 == 0 {
			in.WriteString("data: second line\n\n")
		}
		if i%50 == 0 {
			in.WriteString("data: " + strings.Repeat("L", 1500) + "\n\n") // too large for a slab
		}
	}
	want := referenceParse(in.Bytes())
	for name, r := range map[string]io.Reader{
		"whole": bytes.NewReader(in.Bytes()),
		"half":  iotest.HalfReader(bytes.NewReader(in.Bytes())),
		"split": chunks(in.String(), 700, 5000, 5001, 20000),
	} {
		ch := make(chan sse.Event, 16)
		var wg sync.WaitGroup
		var got []sse.Event
		var sum uint32
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range ch {
				sum += crc32.ChecksumIEEE([]byte(e.Data + e.Type + e.LastEventID))
				got = append(got, e)
			}
		}()
		p := sse.NewParser(r, nil)
		for {
			e, err := p.Next()
			if err != nil {
				break
			}
			ch <- e
		}
		close(ch)
		wg.Wait()
		var wantSum uint32
		for _, e := range want.Events {
			wantSum += crc32.ChecksumIEEE([]byte(e.Data + e.Type + e.LastEventID))
		}
		if !eventsEqual(got, want.Events) || sum != wantSum {
			t.Errorf("%s: events differ from the reference (%d events, want %d)", name, len(got), len(want.Events))
		}
	}
}

// TestSlabAllocations checks that a burst of small events costs far fewer
// allocations than one per event.
func TestSlabAllocations(t *testing.T) {
	var in strings.Builder
	for i := range 1000 {
		in.WriteString(smallEvent(i))
	}
	s := in.String()
	allocs := testing.AllocsPerRun(5, func() {
		p := sse.NewParser(strings.NewReader(s), nil)
		for {
			if _, err := p.Next(); err != nil {
				break
			}
		}
	})
	if allocs > 100 {
		t.Errorf("%v allocations for 1000 events", allocs)
	}
}

// sizeReader returns at most n bytes per Read.
type sizeReader struct {
	s string
	n int
}

func (r *sizeReader) Read(p []byte) (int, error) {
	if r.s == "" {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), r.n)], r.s)
	r.s = r.s[k:]
	return k, nil
}

// TestGrowingBufferBoundaries checks lines, characters and line endings
// that straddle the read buffer's boundaries while it grows and shrinks,
// against the reference parser.
func TestGrowingBufferBoundaries(t *testing.T) {
	var inputs []string
	for _, size := range []int{sse.MinBufSize, 2 * sse.MinBufSize, 4 * sse.MinBufSize} {
		for shift := -3; shift <= 3; shift++ {
			for _, eol := range []string{"\n", "\r", "\r\n"} {
				n := size - len("data: ") + shift
				inputs = append(inputs,
					"data: "+strings.Repeat("x", n)+eol+eol+"id: 1"+eol+"data: y"+eol+eol,
					"id: 1"+eol+"data: "+strings.Repeat("é", n/2)+eol+"data: z"+eol+eol+"data: w"+eol+eol,
					": "+strings.Repeat("c", n)+eol+"data: z"+eol+eol,
					"data: "+strings.Repeat("😀", n/4)+"\xF0\x9F\x98"+eol+eol,
					strings.Repeat("event: t"+eol+"data: "+strings.Repeat("v", shift+5)+eol+eol, 3*size/20),
				)
			}
		}
	}
	for i, in := range inputs {
		want := referenceParse([]byte(in))
		readers := map[string]io.Reader{
			"whole": strings.NewReader(in),
			"half":  iotest.HalfReader(strings.NewReader(in)),
			"100":   &sizeReader{in, 100},
			"511":   &sizeReader{in, 511},
			"513":   &sizeReader{in, 513},
		}
		if i%5 == 0 {
			readers["onebyte"] = iotest.OneByteReader(strings.NewReader(in))
		}
		for name, r := range readers {
			if got := parseAll(r, "", nil); !equalResults(got, want) {
				t.Errorf("input %d (%d bytes), %s:\n got %v\nwant %v", i, len(in), name, got, want)
			}
		}
	}
}
