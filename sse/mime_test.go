package sse_test

import (
	"testing"

	"github.com/pushproxy/pushproxy/sse"
)

func TestIsEventStream(t *testing.T) {
	for ct, want := range map[string]bool{
		"text/event-stream":                       true,
		"TEXT/Event-Stream":                       true,
		" \ttext/event-stream \t":                 true,
		"text/event-stream;":                      true,
		"text/event-stream ;charset=utf-8":        true,
		"text/event-stream;charset=utf-8":         true,
		"text/event-stream; charset=windows-1252": true,
		`text/event-stream; a="x,y"; b`:           true,
		"text/plain, text/event-stream":           true,
		"text/event-stream, */*":                  true,
		"text/event-stream, not a type":           true,
		"":                                        false,
		"text/plain":                              false,
		"text/x-bogus":                            false,
		"x bogus":                                 false,
		"text/event-stream, text/plain":           false,
		`text/plain; a="x, text/event-stream"`:    false,
		"text /event-stream":                      false,
		"text/event stream":                       false,
		"text/event-streams":                      false,
		"text/event-stream/x":                     false,
		"/event-stream":                           false,
		"text/":                                   false,
		"*/*":                                     false,
		"event-stream":                            false,
	} {
		if got := sse.IsEventStream(ct); got != want {
			t.Errorf("IsEventStream(%q) = %v, want %v", ct, got, want)
		}
	}
}
