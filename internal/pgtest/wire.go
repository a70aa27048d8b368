package pgtest

import (
	"encoding/binary"
	"io"
	"net"
	"net/url"
	"testing"
)

// ReadMessage reads one message of Postgres's wire protocol from r, whole: the type byte
// (when typed: every message but a client's first, the start-up), the length and the body.
// Tests' TCP proxies between a store and Postgres read the traffic with it.
func ReadMessage(r io.Reader, typed bool) ([]byte, error) {
	n := 4
	if typed {
		n = 5
	}
	head := make([]byte, n)
	if _, err := io.ReadFull(r, head); err != nil {
		return nil, err
	}
	l := binary.BigEndian.Uint32(head[n-4:])
	msg := make([]byte, n+int(l)-4)
	copy(msg, head)
	_, err := io.ReadFull(r, msg[n:])
	return msg, err
}

// Intercept starts a TCP proxy of the test's own in front of the database server of dbURL:
// each connection to it is served by serve, given the client's connection and a new
// connection to the server (both closed when serve returns). It returns dbURL through the
// proxy. The listener closes when the test ends.
func Intercept(tb testing.TB, dbURL string, serve func(client, server net.Conn)) string {
	tb.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(func() { ln.Close() })
	target := u.Host
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer client.Close()
				server, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer server.Close()
				serve(client, server)
			}()
		}
	}()
	u.Host = ln.Addr().String()
	return u.String()
}
