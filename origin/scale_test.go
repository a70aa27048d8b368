package origin

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"
)

// TestScaleIdleH2Streams opens ORIGIN_SCALE_STREAMS (e.g. 50000) idle streams over one h2c
// connection, reports the memory they take (client and server together) and how long one event
// takes to reach them all. Skipped unless the variable is set.
func TestScaleIdleH2Streams(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("ORIGIN_SCALE_STREAMS"))
	if n <= 0 {
		t.Skip("set ORIGIN_SCALE_STREAMS to run")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	o := New(&Options{})
	ts := httptest.NewUnstartedServer(nil)
	ts.Config = o.HTTPServer()
	ts.Start()
	defer ts.Close()
	defer o.Close()
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	readers := make([]*bufio.Reader, 0, n)
	for i := range n {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/events", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(i, err)
		}
		defer resp.Body.Close()
		readers = append(readers, bufio.NewReaderSize(resp.Body, 16))
	}
	if err := o.WaitFor(ctx, func(s Stats) bool { return s.Open == n }); err != nil {
		t.Fatal(err)
	}
	t.Logf("opened %d streams in %v", n, time.Since(start))
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("goroutines %d; heap+stacks grew by %d MB (client and server)", runtime.NumGoroutine(),
		(after.HeapInuse+after.StackInuse-before.HeapInuse-before.StackInuse)>>20)

	start = time.Now()
	e := o.Emit("x", "y")
	for _, r := range readers {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if line == "id: "+e.ID+"\n" {
				break
			}
		}
	}
	t.Logf("one event reached %d streams in %v", n, time.Since(start))
}
