package sse_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"testing"

	"github.com/pushproxy/pushproxy/sse"
)

// benchStream is a realistic stream: 10,000 events with ids and types, JSON
// data of about 150 bytes, every tenth event with three data lines, and an
// occasional comment.
var benchStream = func() []byte {
	var b bytes.Buffer
	for i := range 10000 {
		fmt.Fprintf(&b, "id: %d\n", 1000000+i)
		fmt.Fprintf(&b, "event: %s\n", []string{"update", "create", "delete"}[i%3])
		json := fmt.Sprintf(`{"id":%d,"user":"user-%d","title":"Some title for item %d","tags":["alpha","beta","gamma"],"score":%d.%02d,"ok":true}`,
			i, i%977, i, i%1000, i%100)
		if i%10 == 0 {
			fmt.Fprintf(&b, "data: %s\ndata: %s\ndata: %s\n", json[:50], json[50:100], json[100:])
		} else {
			fmt.Fprintf(&b, "data: %s\n", json)
		}
		b.WriteString("\n")
		if i%100 == 0 {
			b.WriteString(": keep-alive\n")
		}
	}
	return b.Bytes()
}()

func BenchmarkParse(b *testing.B) { benchmarkParse(b, benchStream) }

// BenchmarkParseCRLF is BenchmarkParse with CRLF line endings.
func BenchmarkParseCRLF(b *testing.B) {
	benchmarkParse(b, bytes.ReplaceAll(benchStream, []byte("\n"), []byte("\r\n")))
}

// benchmarkParse parses stream, which holds 10,000 events, to its end.
func benchmarkParse(b *testing.B, stream []byte) {
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		p := sse.NewParser(bytes.NewReader(stream), nil)
		n := 0
		for {
			_, err := p.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			n++
		}
		if n != 10000 {
			b.Fatalf("%d events", n)
		}
	}
}

// BenchmarkBufioScanLines only splits the same stream into lines, as a
// baseline for BenchmarkParse.
func BenchmarkBufioScanLines(b *testing.B) {
	b.SetBytes(int64(len(benchStream)))
	b.ReportAllocs()
	for b.Loop() {
		sc := bufio.NewScanner(bytes.NewReader(benchStream))
		n := 0
		for sc.Scan() {
			n += len(sc.Bytes())
		}
		if n == 0 {
			b.Fatal("no lines")
		}
	}
}

func BenchmarkWrite(b *testing.B) {
	events := make([]sse.Event, 0, 10000)
	p := sse.NewParser(bytes.NewReader(benchStream), nil)
	for {
		ev, err := p.Next()
		if err != nil {
			break
		}
		events = append(events, ev)
	}
	b.SetBytes(int64(len(benchStream)))
	b.ReportAllocs()
	w := sse.NewWriter(io.Discard)
	for b.Loop() {
		for _, ev := range events {
			if err := w.WriteEvent(ev); err != nil {
				b.Fatal(err)
			}
		}
	}
}
