package sse_test

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/pushproxy/pushproxy/sse"
)

func ExampleParser() {
	stream := ": keep-alive\n" +
		"retry: 5000\n" +
		"id: 1\n" +
		"event: greeting\n" +
		"data: hello\n" +
		"data: world\n" +
		"\n" +
		"data: no type, same id\r\n\r\n" +
		"id: 2\n" +
		"data: cut off by the end of the stream\n"

	p := sse.NewParser(strings.NewReader(stream), nil)
	for {
		ev, err := p.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			fmt.Println("error:", err)
			return
		}
		typ := ev.Type
		if typ == "" {
			typ = "message"
		}
		fmt.Printf("%s id=%q data=%q\n", typ, ev.LastEventID, ev.Data)
	}
	retry, _ := p.Retry()
	fmt.Printf("reconnect after %d ms with Last-Event-ID %q\n", retry, p.LastEventID())
	// Output:
	// greeting id="1" data="hello\nworld"
	// message id="1" data="no type, same id"
	// reconnect after 5000 ms with Last-Event-ID "1"
}

func ExampleWriter() {
	w := sse.NewWriter(os.Stdout)
	w.WriteRetry(3000)
	w.WriteEvent(sse.Event{LastEventID: "1", Type: "update", Data: "line 1\nline 2"})
	w.WriteEvent(sse.Event{LastEventID: "1", Data: " leading space kept"})
	w.WriteComment("keep-alive")
	w.WriteEvent(sse.Event{LastEventID: "2", Data: ""})
	// Output:
	// retry: 3000
	// id: 1
	// event: update
	// data: line 1
	// data: line 2
	//
	// data:  leading space kept
	//
	// : keep-alive
	// id: 2
	// data:
	//
}
