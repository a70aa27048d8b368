package store

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pushproxy/pushproxy"
)

// classify turns the errors of a database that cannot serve now (unreachable, restarting,
// shutting down, overloaded, or a lock or statement that timed out) into
// pushproxy.EUNAVAILABLE, which the API answers with 503: the request may be retried. The
// original error stays in the chain (errors.As still finds a *pgconn.PgError). Any other
// error is returned as it is.
//
// Every public method of the store gets it through db, the pool wrapper below; the few that
// dial a connection of their own (Migrate, the Listener) call it themselves.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var pe *pushproxy.Error
	if errors.As(err, &pe) {
		return err
	}
	if msg := unavailable(err); msg != "" {
		return &pushproxy.Error{Code: pushproxy.EUNAVAILABLE, Message: msg, Err: err}
	}
	return err
}

// Messages of the unavailable errors: shown to API clients, so they name no detail.
const (
	msgUnavailable = "the database is unavailable; retry later"
	msgBusy        = "the stream is busy; retry"
	msgTimeout     = "the database did not answer in time; retry later"
	msgConflict    = "a concurrent update conflicted; retry"
)

// unavailable returns the client's message for an error that means "not now", or "".
func unavailable(err error) string {
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		// Refused, unreachable, starting up, too many connections, authentication: this
		// instance cannot reach its database, whatever the reason.
		return msgUnavailable
	}
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		switch {
		case pg.Code == "55P03": // lock_not_available: lock_timeout
			return msgBusy
		case pg.Code == "57014": // query_canceled: statement_timeout
			return msgTimeout
		case pg.Code == "40001", pg.Code == "40P01": // serialization failure, deadlock
			return msgConflict
		case strings.HasPrefix(pg.Code, "08"), // connection exception
			pg.Code == "57P01", pg.Code == "57P02", pg.Code == "57P03", // admin/crash shutdown, cannot connect now
			pg.Code == "25P03", // idle_in_transaction_session_timeout
			pg.Code == "53300": // too_many_connections
			return msgUnavailable
		}
		return ""
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		// Waiting for a pool connection or an answer outlasted the caller's deadline.
		return msgTimeout
	case errors.As(err, &ne), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EPIPE):
		return msgUnavailable
	case pgconn.SafeToRetry(err):
		// pgx knows nothing reached the server (a closed connection taken from the pool).
		return msgUnavailable
	}
	return ""
}

// db is the pool as the store's methods use it: every error that comes out of it (from a
// query, a row scanned later, a transaction's statements or its commit) is classified, so
// that every public method reports an unavailable database the same way without a line of
// its own.
type db struct{ pool *pgxpool.Pool }

func (d db) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return classifiedExec(d.pool.Exec(ctx, sql, args...))
}

func (d db) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return classifiedQuery(d.pool.Query(ctx, sql, args...))
}

func (d db) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return classifiedRow{d.pool.QueryRow(ctx, sql, args...)}
}

func (d db) Begin(ctx context.Context) (pgx.Tx, error) {
	return d.BeginTx(ctx, pgx.TxOptions{})
}

func (d db) BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error) {
	tx, err := d.pool.BeginTx(ctx, opts)
	if err != nil {
		return nil, classify(err)
	}
	return classifiedTx{tx}, nil
}

func (d db) Ping(ctx context.Context) error { return classify(d.pool.Ping(ctx)) }

// classifiedTx is a transaction of db.
type classifiedTx struct{ pgx.Tx }

var _ pgx.Tx = classifiedTx{}

func (t classifiedTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return classifiedExec(t.Tx.Exec(ctx, sql, args...))
}

func (t classifiedTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return classifiedQuery(t.Tx.Query(ctx, sql, args...))
}

func (t classifiedTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return classifiedRow{t.Tx.QueryRow(ctx, sql, args...)}
}

func (t classifiedTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	n, err := t.Tx.CopyFrom(ctx, table, columns, src)
	return n, classify(err)
}

func (t classifiedTx) Commit(ctx context.Context) error { return classify(t.Tx.Commit(ctx)) }

func (t classifiedTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return classifiedBatch{t.Tx.SendBatch(ctx, b)}
}

// classifiedBatch is the results of a batch sent in a classifiedTx.
type classifiedBatch struct{ pgx.BatchResults }

func (b classifiedBatch) Exec() (pgconn.CommandTag, error) {
	return classifiedExec(b.BatchResults.Exec())
}

func (b classifiedBatch) Query() (pgx.Rows, error) { return classifiedQuery(b.BatchResults.Query()) }

func (b classifiedBatch) QueryRow() pgx.Row { return classifiedRow{b.BatchResults.QueryRow()} }

func (b classifiedBatch) Close() error { return classify(b.BatchResults.Close()) }

func classifiedExec(tag pgconn.CommandTag, err error) (pgconn.CommandTag, error) {
	return tag, classify(err)
}

func classifiedQuery(rows pgx.Rows, err error) (pgx.Rows, error) {
	if err != nil {
		return nil, classify(err)
	}
	return classifiedRows{rows}, nil
}

type classifiedRow struct{ pgx.Row }

func (r classifiedRow) Scan(dest ...any) error { return classify(r.Row.Scan(dest...)) }

type classifiedRows struct{ pgx.Rows }

func (r classifiedRows) Err() error             { return classify(r.Rows.Err()) }
func (r classifiedRows) Scan(dest ...any) error { return classify(r.Rows.Scan(dest...)) }
