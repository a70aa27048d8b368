package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/tern/v2/migrate"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/migrations"
)

// EventsChannel is the LISTEN/NOTIFY channel on which Commit announces new events. The payload
// is the stream id.
const EventsChannel = "pushproxy_events"

// versionTable is where tern records the schema version.
const versionTable = "pushproxy_schema_version"

// Options configure a Store. A nil *Options means defaults.
type Options struct {
	// MaxConns bounds the pool (0: pgxpool's default, max(4, GOMAXPROCS)).
	MaxConns int32
	Logger   *slog.Logger
	// Sealer, when set, seals new streams' forwarded credentials (header values, the URL's
	// query) and opens them when a stream is claimed. Without it they are stored in clear,
	// and streams sealed by other instances are left to them.
	Sealer Sealer
}

// Store is the Postgres persistence of pushproxy.
type Store struct {
	pool   *pgxpool.Pool
	log    *slog.Logger
	sealer Sealer
}

// Open connects to the database at url and checks that it answers.
func Open(ctx context.Context, url string, opts *Options) (*Store, error) {
	if opts == nil {
		opts = &Options{}
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", redactURLError(err))
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	// Plan every statement for its actual parameters. The batch statements take arrays
	// (unnest); a generic plan guesses 10 elements and, for a commit of thousands of streams,
	// joins them by a nested loop over every stream the instance holds: seconds, not
	// milliseconds. Custom plans see the array lengths.
	if _, ok := cfg.ConnConfig.RuntimeParams["plan_cache_mode"]; !ok {
		cfg.ConnConfig.RuntimeParams["plan_cache_mode"] = "force_custom_plan"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{pool: pool, log: log, sealer: opts.Sealer}, nil
}

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Pool returns the underlying pool.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// redactURLError keeps a connection string's password out of error messages: pgx's parse
// errors quote the string.
func redactURLError(err error) error {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		return errors.New("invalid connection string")
	}
	return err
}

// MigrationStatus reports the schema version of a database and the newest version this
// binary knows.
type MigrationStatus struct {
	Current int32
	Latest  int32
	Names   []string // every migration this binary has, in order
}

func newMigrator(ctx context.Context, conn *pgx.Conn) (*migrate.Migrator, error) {
	m, err := migrate.NewMigrator(ctx, conn, versionTable)
	if err != nil {
		return nil, fmt.Errorf("prepare migrations: %w", err)
	}
	if err := m.LoadMigrations(migrations.FS); err != nil {
		return nil, fmt.Errorf("load migrations: %w", err)
	}
	return m, nil
}

// Migrate applies every pending migration to the database at url. It takes an advisory
// lock, so instances starting together apply each migration once.
func Migrate(ctx context.Context, url string, log *slog.Logger) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connect to database: %w", redactURLError(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	m, err := newMigrator(ctx, conn)
	if err != nil {
		return err
	}
	if log != nil {
		m.OnStart = func(seq int32, name, direction, _ string) {
			log.InfoContext(ctx, "applying migration", slog.Int("version", int(seq)), slog.String("name", name), slog.String("direction", direction))
		}
	}
	if err := m.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// GetMigrationStatus reports the schema version of the database at url.
func GetMigrationStatus(ctx context.Context, url string) (MigrationStatus, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return MigrationStatus{}, fmt.Errorf("connect to database: %w", redactURLError(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	m, err := newMigrator(ctx, conn)
	if err != nil {
		return MigrationStatus{}, err
	}
	cur, err := m.GetCurrentVersion(ctx)
	if err != nil {
		return MigrationStatus{}, fmt.Errorf("read schema version: %w", err)
	}
	st := MigrationStatus{Current: cur, Latest: int32(len(m.Migrations))}
	for _, mg := range m.Migrations {
		st.Names = append(st.Names, mg.Name)
	}
	return st, nil
}

// CheckSchema returns an error unless the database is at the newest schema version.
func CheckSchema(ctx context.Context, url string) error {
	st, err := GetMigrationStatus(ctx, url)
	if err != nil {
		return err
	}
	if st.Current != st.Latest {
		return pushproxy.Errorf(pushproxy.EUNAVAILABLE, "database schema is at version %d, this binary needs %d: run `pushproxy migrate up`", st.Current, st.Latest)
	}
	return nil
}
