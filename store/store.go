package store

import (
	"cmp"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// EventsChannel is the LISTEN/NOTIFY channel on which releases before schema version 10
// announced new events (one stream id per notification). Readers opened by those releases
// are still notified on it.
const EventsChannel = "pushproxy_events"

// ReaderChannel is the LISTEN/NOTIFY channel of an instance's readers: commits notify it when
// a stream with a reader open on that instance has news. The payload is a comma-separated
// list of stream ids (at most 200). A channel name is an identifier of at most 63 bytes, and
// an instance id may be longer: the name carries its MD5.
func ReaderChannel(instance string) string {
	sum := md5.Sum([]byte(instance))
	return "pushproxy_readers_" + hex.EncodeToString(sum[:])
}

// Options configure a Store. A nil *Options means defaults.
type Options struct {
	// MaxConns bounds the pool (0: pgxpool's default, max(4, GOMAXPROCS)).
	MaxConns int32
	Logger   *slog.Logger

	// LeaseTTL is the instances' lease TTL. No session of the store may hold locks longer
	// than a lease, or a frozen instance keeps its streams from the others after its lease
	// lapsed: the two timeouts below default to a third of it, and Open refuses them unless
	// they are below it. 0: the timeouts default to DefaultStatementTimeout and are not
	// checked.
	LeaseTTL time.Duration
	// StatementTimeout bounds every statement of the pool's sessions (statement_timeout).
	StatementTimeout time.Duration
	// IdleInTransactionTimeout ends a session that sits this long in an open transaction
	// without sending a statement (idle_in_transaction_session_timeout): an instance frozen
	// in the middle of a commit (SIGSTOP, a paused container, a partition) loses its session,
	// and with it its row locks, after this long.
	IdleInTransactionTimeout time.Duration
	// LockTimeout bounds how long a request waits for a stream's row lock (acknowledging
	// read, close, an operator's forget): past it the request fails with
	// pushproxy.EUNAVAILABLE ("busy, retry") instead of hanging (0: DefaultLockTimeout). The
	// statement timeout ends a longer wait anyway.
	LockTimeout time.Duration
	// Sealer, when set, seals new streams' forwarded credentials (header values, the URL's
	// query) and opens them when a stream is claimed. Without it they are stored in clear,
	// and streams sealed by other instances are left to them.
	Sealer Sealer
	// Tracer, when set, sees every statement of the pool (tests record the statements to
	// check their query plans).
	Tracer pgx.QueryTracer
	// InstanceID, when set, names the pool's sessions after the instance
	// (application_name, SessionName), unless the database URL or PGAPPNAME names them: then
	// the maintenance leader can end those the instance leaves stuck in a transaction
	// (EndStuckSessions).
	InstanceID string
}

// Defaults of the session timeouts.
const (
	DefaultStatementTimeout = 10 * time.Second
	DefaultLockTimeout      = 2 * time.Second
)

// sessionTimeouts fills in the defaults of o's timeouts and checks them against the lease.
func (o *Options) sessionTimeouts() (stmt, idle, lock time.Duration, err error) {
	def := DefaultStatementTimeout
	if o.LeaseTTL > 0 {
		def = o.LeaseTTL / 3
	}
	stmt, idle = cmp.Or(o.StatementTimeout, def), cmp.Or(o.IdleInTransactionTimeout, def)
	lock = cmp.Or(o.LockTimeout, DefaultLockTimeout)
	for _, t := range []struct {
		name  string
		d     time.Duration
		lease bool // must be below the lease TTL
	}{{"statement timeout", stmt, true}, {"idle-in-transaction timeout", idle, true}, {"lock timeout", lock, false}} {
		if t.d < time.Millisecond {
			return 0, 0, 0, fmt.Errorf("the %s must be at least 1ms, not %s", t.name, t.d)
		}
		if t.lease && o.LeaseTTL > 0 && t.d >= o.LeaseTTL {
			return 0, 0, 0, fmt.Errorf("the %s (%s) must be below the lease TTL (%s): a session could hold locks past a lease", t.name, t.d, o.LeaseTTL)
		}
	}
	return stmt, idle, lock, nil
}

// Store is the Postgres persistence of pushproxy.
type Store struct {
	pool db
	log  *slog.Logger
	// lockBegin begins a transaction of a request that waits for a stream's row lock at
	// most the lock timeout.
	lockBegin string
	// lockTimeoutSQL sets the lock timeout of lockBegin in a transaction sent as a batch.
	lockTimeoutSQL string
	sealer         Sealer
	keySlots       *keySlots
}

// Open connects to the database at url and checks that it answers.
func Open(ctx context.Context, url string, opts *Options) (*Store, error) {
	if opts == nil {
		opts = &Options{}
	}
	stmt, idle, lock, err := opts.sessionTimeouts()
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", redactURLError(err))
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	if opts.Tracer != nil {
		cfg.ConnConfig.Tracer = opts.Tracer
	}
	rp := cfg.ConnConfig.RuntimeParams
	// Plan every statement for its actual parameters. The batch statements take arrays
	// (unnest); a generic plan guesses 10 elements and, for a commit of thousands of streams,
	// joins them by a nested loop over every stream the instance holds: seconds, not
	// milliseconds. Custom plans see the array lengths.
	if _, ok := rp["plan_cache_mode"]; !ok {
		rp["plan_cache_mode"] = "force_custom_plan"
	}
	nameOverridden := ""
	if name, ok := rp["application_name"]; !ok && opts.InstanceID != "" {
		rp["application_name"] = SessionName(opts.InstanceID)
	} else if ok && opts.InstanceID != "" && name != SessionName(opts.InstanceID) {
		nameOverridden = name
	}
	// Sent in the start-up packet, so they hold from a session's first statement.
	rp["statement_timeout"] = strconv.FormatInt(stmt.Milliseconds(), 10)
	rp["idle_in_transaction_session_timeout"] = strconv.FormatInt(idle.Milliseconds(), 10)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to database: %w", classify(err))
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if nameOverridden != "" {
		log.WarnContext(ctx, "the database URL or PGAPPNAME names this instance's sessions: the maintenance leader cannot find those it leaves stuck in a transaction (a freeze while copying events) to end them",
			slog.String("application_name", nameOverridden), slog.String("expected", SessionName(opts.InstanceID)))
	}
	return &Store{
		pool:           db{pool},
		log:            log,
		lockBegin:      fmt.Sprintf("BEGIN; SET LOCAL lock_timeout = %d", lock.Milliseconds()),
		lockTimeoutSQL: fmt.Sprintf("SET LOCAL lock_timeout = %d", lock.Milliseconds()),
		sealer:         opts.Sealer,
		keySlots:       newKeySlots(),
	}, nil
}

// Close closes the pool.
func (s *Store) Close() { s.pool.pool.Close() }

// Pool returns the underlying pool.
func (s *Store) Pool() *pgxpool.Pool { return s.pool.pool }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// lockingTx runs fn in a transaction whose lock waits give up after the lock timeout, with
// pushproxy.EUNAVAILABLE: for requests that lock a stream's row, which an instance frozen in
// a commit may hold until its session is ended.
func (s *Store) lockingTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{BeginQuery: s.lockBegin}, fn)
}

// redactURLError keeps a connection string's password out of error messages: pgx's parse
// errors quote the string.
func redactURLError(err error) error {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		return errors.New("invalid connection string")
	}
	return err
}
