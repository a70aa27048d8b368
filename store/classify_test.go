package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pushproxy/pushproxy"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	pg := func(code string) error { return fmt.Errorf("query: %w", &pgconn.PgError{Code: code}) }
	for _, c := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{pg("55P03"), pushproxy.EUNAVAILABLE},   // lock timeout
		{pg("57014"), pushproxy.EUNAVAILABLE},   // statement timeout
		{pg("57P01"), pushproxy.EUNAVAILABLE},   // admin shutdown
		{pg("57P03"), pushproxy.EUNAVAILABLE},   // cannot connect now
		{pg("08006"), pushproxy.EUNAVAILABLE},   // connection failure
		{pg("25P03"), pushproxy.EUNAVAILABLE},   // idle in transaction timeout
		{pg("40P01"), pushproxy.EUNAVAILABLE},   // deadlock
		{pg("23505"), pushproxy.EINTERNAL},      // unique violation: a bug, not an outage
		{pg("22021"), pushproxy.EINTERNAL},      // bad data
		{pgx.ErrNoRows, pushproxy.EINTERNAL},    // left to the caller
		{context.Canceled, pushproxy.EINTERNAL}, // the caller left
		{fmt.Errorf("read: %w", io.ErrUnexpectedEOF), pushproxy.EUNAVAILABLE},
		{context.DeadlineExceeded, pushproxy.EUNAVAILABLE},
		{&pgconn.ConnectError{}, pushproxy.EUNAVAILABLE},
		{pushproxy.Errorf(pushproxy.ENOTFOUND, "no stream"), pushproxy.ENOTFOUND},
	} {
		got := classify(c.err)
		if code := pushproxy.ErrorCode(got); code != c.want {
			t.Errorf("classify(%v): code %q, want %q", c.err, code, c.want)
		}
		if c.err != nil && !errors.Is(got, c.err) {
			t.Errorf("classify(%v) lost the cause: %v", c.err, got)
		}
	}
}
