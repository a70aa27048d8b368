package pgtest

import (
	"encoding/binary"
	"io"
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
