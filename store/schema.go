package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/tern/v2/migrate"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/migrations"
)

// Schema versions and rolling upgrades.
//
// tern records the schema version (the number of migrations applied) in versionTable. Each
// migration also records, in compatTable and in the transaction that applies it, the oldest
// schema version whose code still works on the schema it produces: what its file declares
// on a line of its own,
//
//	-- pushproxy:compatible-with 4
//
// or, without that line, its own version (code older than the migration does not work with
// it). An instance whose code is at version b runs on a database at version d > b when
// every migration after b declares itself compatible with b: that is how the instances of the
// previous release keep running while `migrate up` has expanded the schema under them. The
// declarations are read from the database, not from the binary, since an old binary does not
// have the newer files.
const (
	versionTable = "pushproxy_schema_version"
	compatTable  = "pushproxy_schema_compat"
)

// compatLine is the declaration of a migration's compatibility.
var compatLine = regexp.MustCompile(`(?m)^--[ \t]*pushproxy:compatible-with[ \t]+(\S+)[ \t]*$`)

// declaredCompat returns the oldest schema version whose code works after the migration
// number seq with the given SQL: its declaration, or seq itself.
func declaredCompat(seq int32, name, sql string) (int32, error) {
	m := compatLine.FindAllStringSubmatch(sql, -1)
	switch len(m) {
	case 0:
		return seq, nil
	case 1:
	default:
		return 0, fmt.Errorf("migration %s declares pushproxy:compatible-with more than once", name)
	}
	v, err := strconv.ParseInt(m[0][1], 10, 32)
	if err != nil || v < 1 || int32(v) > seq {
		return 0, fmt.Errorf("migration %s: pushproxy:compatible-with %q must be a schema version from 1 to %d", name, m[0][1], seq)
	}
	return int32(v), nil
}

// MigrationStatus reports the schema version of a database and the newest version this
// binary knows.
type MigrationStatus struct {
	Current int32
	Latest  int32
	Names   []string // every migration this binary has, in order
	// Compat is, for each of them, the oldest schema version whose code works after it (its
	// pushproxy:compatible-with declaration, or its own version).
	Compat []int32
	// OldestCompatible is the oldest schema version whose code works on the database as it
	// is (Current when no migration declared itself compatible with older code). A binary
	// runs on the database when Latest is from OldestCompatible to Current.
	OldestCompatible int32
}

// schema is the migrations of this binary, on one connection.
type schema struct {
	conn   *pgx.Conn
	m      *migrate.Migrator
	compat []int32 // by version - 1
}

// openSchema connects to url and loads the migrations of fsys.
func openSchema(ctx context.Context, url string, fsys fs.FS) (*schema, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect to database: %w", classify(redactURLError(err)))
	}
	sc := &schema{conn: conn}
	if err := sc.load(ctx, fsys); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return sc, nil
}

func (sc *schema) load(ctx context.Context, fsys fs.FS) error {
	m, err := migrate.NewMigrator(ctx, sc.conn, versionTable)
	if err != nil {
		return fmt.Errorf("prepare migrations: %w", classify(err))
	}
	if err := m.LoadMigrations(fsys); err != nil {
		return fmt.Errorf("load migrations: %w", err)
	}
	sc.m = m
	for _, mg := range m.Migrations {
		c, err := declaredCompat(mg.Sequence, mg.Name, mg.UpSQL)
		if err != nil {
			return err
		}
		sc.compat = append(sc.compat, c)
		// Recorded in the migration's own transaction.
		mg.UpSQL += "\n;\n" + recordCompatSQL(mg.Sequence, c, mg.Name)
	}
	return nil
}

// createCompatTable creates compatTable unless it exists. Like tern's version table, it is
// made outside the migrations, so that every migration can record itself, the first one
// included.
func (sc *schema) createCompatTable(ctx context.Context) error {
	_, err := sc.conn.Exec(ctx, `
		CREATE TABLE IF NOT EXISTS `+compatTable+` (
			version          integer PRIMARY KEY,
			compatible_with  integer NOT NULL,
			name             text NOT NULL,
			applied_at       timestamptz NOT NULL DEFAULT now()
		)`)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "42P07" || pe.Code == "23505") {
		return nil // another instance created it at the same moment
	}
	if err != nil {
		return fmt.Errorf("prepare migrations: %w", classify(err))
	}
	// Migrations applied before compatibility was recorded: record what this binary knows
	// of them.
	names := make([]string, len(sc.m.Migrations))
	for i, mg := range sc.m.Migrations {
		names[i] = mg.Name
	}
	_, err = sc.conn.Exec(ctx, `
		INSERT INTO `+compatTable+` (version, compatible_with, name)
		SELECT v, c, n FROM unnest($1::int[], $2::text[]) WITH ORDINALITY AS u(c, n, v)
		WHERE v <= (SELECT version FROM `+versionTable+`)
		ON CONFLICT (version) DO NOTHING`, sc.compat, names)
	if err != nil {
		return fmt.Errorf("record schema compatibility: %w", classify(err))
	}
	return nil
}

func recordCompatSQL(version, compat int32, name string) string {
	return fmt.Sprintf(`INSERT INTO %s (version, compatible_with, name) VALUES (%d, %d, '%s')
ON CONFLICT (version) DO UPDATE SET compatible_with = excluded.compatible_with, name = excluded.name, applied_at = now()`,
		compatTable, version, compat, strings.ReplaceAll(name, "'", "''"))
}

func (sc *schema) close(ctx context.Context) { sc.conn.Close(context.WithoutCancel(ctx)) }

func (sc *schema) latest() int32 { return int32(len(sc.m.Migrations)) }

// status reads the database's version and the oldest code version it works with.
func (sc *schema) status(ctx context.Context) (MigrationStatus, error) {
	cur, err := sc.m.GetCurrentVersion(ctx)
	if err != nil {
		return MigrationStatus{}, fmt.Errorf("read schema version: %w", classify(err))
	}
	st := MigrationStatus{Current: cur, Latest: sc.latest(), Compat: sc.compat}
	for _, mg := range sc.m.Migrations {
		st.Names = append(st.Names, mg.Name)
	}
	compat := map[int32]int32{}
	// The table is missing where no binary that records compatibility migrated yet: then no
	// migration is known compatible with older code.
	rows, err := sc.conn.Query(ctx, `
		SELECT version, compatible_with FROM `+compatTable+` WHERE version <= $1`, cur)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42P01" {
		st.OldestCompatible = cur
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read schema compatibility: %w", classify(err))
	}
	var v, c int32
	if _, err := pgx.ForEachRow(rows, []any{&v, &c}, func() error { compat[v] = c; return nil }); err != nil {
		return st, fmt.Errorf("read schema compatibility: %w", classify(err))
	}
	st.OldestCompatible = oldestCompatible(cur, compat)
	return st, nil
}

// oldestCompatible is the oldest code version that works on a schema at version cur, given
// what each applied migration declared (a migration with no record counts as compatible
// with nothing older than itself). Code at version b works when every migration after b is
// compatible with b; that holds for every b from the result up to cur.
func oldestCompatible(cur int32, compat map[int32]int32) int32 {
	oldest, need := cur, int32(0)
	for v := cur; v >= 1; v-- {
		c, ok := compat[v]
		if !ok {
			c = v
		}
		need = max(need, c)
		if need > v-1 {
			break
		}
		oldest = v - 1
	}
	return oldest
}

// check returns nil when this binary runs on the database as st describes it.
func (st MigrationStatus) check() error {
	switch {
	case st.Current == st.Latest:
		return nil
	case st.Current < st.Latest:
		return pushproxy.Errorf(pushproxy.EUNAVAILABLE, "database schema is at version %d, this binary needs %d: run `pushproxy migrate up`", st.Current, st.Latest)
	case st.Latest >= st.OldestCompatible:
		return nil
	default:
		return pushproxy.Errorf(pushproxy.EUNAVAILABLE, "database schema is at version %d, newer than this binary's %d, and not compatible with it (it needs code of schema version %d or newer): run a newer pushproxy", st.Current, st.Latest, st.OldestCompatible)
	}
}

// Migrate applies every pending migration to the database at url. It takes an advisory
// lock, so instances starting together apply each migration once. A database already at a
// newer version than this binary's is left alone if that version is compatible with this
// binary (an old instance restarting during a rolling upgrade), and refused otherwise.
func Migrate(ctx context.Context, url string, log *slog.Logger) error {
	return migrateFS(ctx, url, migrations.FS, log)
}

func migrateFS(ctx context.Context, url string, fsys fs.FS, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sc, err := openSchema(ctx, url, fsys)
	if err != nil {
		return err
	}
	defer sc.close(ctx)
	newer := func() (bool, error) {
		st, err := sc.status(ctx)
		if err != nil || st.Current <= st.Latest {
			return false, err
		}
		if err := st.check(); err != nil {
			return true, err
		}
		log.InfoContext(ctx, "database schema is newer than this binary's and compatible with it: nothing to migrate",
			slog.Int("version", int(st.Current)), slog.Int("binary_version", int(st.Latest)))
		return true, nil
	}
	if done, err := newer(); done || err != nil {
		return err
	}
	if err := sc.createCompatTable(ctx); err != nil {
		return err
	}
	sc.m.OnStart = func(seq int32, name, direction, _ string) {
		log.InfoContext(ctx, "applying migration", slog.Int("version", int(seq)), slog.String("name", name), slog.String("direction", direction))
	}
	if err := sc.m.Migrate(ctx); err != nil {
		var bad migrate.BadVersionError
		if errors.As(err, &bad) {
			// A newer binary migrated further since we looked.
			if done, nerr := newer(); done {
				return nerr
			}
		}
		return fmt.Errorf("migrate: %w", classify(err))
	}
	return nil
}

// GetMigrationStatus reports the schema version of the database at url.
func GetMigrationStatus(ctx context.Context, url string) (MigrationStatus, error) {
	sc, err := openSchema(ctx, url, migrations.FS)
	if err != nil {
		return MigrationStatus{}, err
	}
	defer sc.close(ctx)
	return sc.status(ctx)
}

// CheckSchema returns an error unless this binary runs on the database's schema: the
// newest, or a newer one that every migration after this binary's declares compatible.
func CheckSchema(ctx context.Context, url string) error {
	st, err := GetMigrationStatus(ctx, url)
	if err != nil {
		return err
	}
	return st.check()
}
