package store_test

import (
	"context"
	"fmt"
	"io/fs"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/migrations"
	"github.com/pushproxy/pushproxy/store"
)

// release returns the migrations of this binary plus future ones: what a newer release
// ships.
func release(t *testing.T, future ...string) fs.FS {
	t.Helper()
	files := fstest.MapFS{}
	entries, err := fs.ReadDir(migrations.FS, ".")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		b, err := fs.ReadFile(migrations.FS, e.Name())
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = &fstest.MapFile{Data: b}
		if strings.HasSuffix(e.Name(), ".sql") {
			n++
		}
	}
	for i, sql := range future {
		files[fmt.Sprintf("%03d_future.sql", n+1+i)] = &fstest.MapFile{Data: []byte(sql)}
	}
	return files
}

func latest(t *testing.T) int32 {
	t.Helper()
	st, err := store.GetMigrationStatus(context.Background(), migratedDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	return st.Latest
}

// TestOldBinaryRunsOnACompatibleNewerSchema is a rolling upgrade seen by an instance of the
// previous release: after `migrate up` by the new release, it starts (with --migrate=false
// and with --migrate) on an expanded schema, and refuses a schema that dropped what it uses.
func TestOldBinaryRunsOnACompatibleNewerSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ours := latest(t)
	expand := fmt.Sprintf("-- A column the next release writes; the previous one ignores it.\n-- pushproxy:compatible-with %d\nALTER TABLE streams ADD COLUMN future_note text;\n", ours)
	contract := fmt.Sprintf("-- pushproxy:compatible-with %d\nALTER TABLE streams DROP COLUMN future_note;\n", ours+1)
	undeclared := "ALTER TABLE streams ADD COLUMN other_note text;\n"

	for _, c := range []struct {
		name     string
		future   []string
		accepted bool
		oldest   int32
	}{
		{"expanded", []string{expand}, true, ours},
		{"expanded twice, an index built concurrently", []string{expand, fmt.Sprintf("---- tern: disable-tx ----\n-- pushproxy:compatible-with %d\nCREATE INDEX CONCURRENTLY streams_future ON streams (future_note);\n", ours)}, true, ours},
		{"contracted", []string{expand, contract}, false, ours + 1},
		{"undeclared", []string{undeclared}, false, ours + 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			url := migratedDatabase(t)
			if err := store.MigrateFS(ctx, url, release(t, c.future...), nil); err != nil {
				t.Fatalf("migrate up with the next release: %v", err)
			}
			status, err := store.GetMigrationStatus(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			want := ours + int32(len(c.future))
			if status.Current != want || status.Latest != ours || status.OldestCompatible != c.oldest {
				t.Fatalf("status %+v, want current %d, latest %d, oldest compatible %d", status, want, ours, c.oldest)
			}
			checkErr := store.CheckSchema(ctx, url)    // --migrate=false
			migrateErr := store.Migrate(ctx, url, nil) // --migrate (the default)
			if c.accepted {
				if checkErr != nil || migrateErr != nil {
					t.Fatalf("start-up of the previous release refused: check %v, migrate %v", checkErr, migrateErr)
				}
				// And it works there.
				st := open(t, url, nil)
				if err := st.RenewInstance(ctx, owner, time.Minute); err != nil {
					t.Fatal(err)
				}
				s, _ := newStream(t, st, nil)
				if _, err := st.GetStream(ctx, s.ID); err != nil {
					t.Fatal(err)
				}
			} else {
				for _, err := range []error{checkErr, migrateErr} {
					if err == nil || !strings.Contains(err.Error(), "not compatible") {
						t.Fatalf("start-up on an incompatible schema: %v, want a refusal that says why", err)
					}
				}
			}
			// Migrate did not touch the newer schema either way.
			if status, err := store.GetMigrationStatus(ctx, url); err != nil || status.Current != want {
				t.Fatalf("after the previous release started: %+v, %v", status, err)
			}
		})
	}
}

// TestSchemaOlderThanTheBinaryIsRefused: a binary needs every migration it has applied, and
// migrating again with the same release changes nothing.
func TestSchemaOlderThanTheBinaryIsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := migratedDatabase(t)
	future := release(t, "-- pushproxy:compatible-with 1\nCREATE TABLE future (id int);\n")
	if err := store.MigrateFS(ctx, url, future, nil); err != nil {
		t.Fatal(err)
	}
	// The binary of the future release sees what it needs.
	if err := store.MigrateFS(ctx, url, future, nil); err != nil {
		t.Fatalf("second migrate of the future release: %v", err)
	}
	empty := pgtest.NewDatabase(t)
	err := store.CheckSchema(ctx, empty)
	if pushproxy.ErrorCode(err) != pushproxy.EUNAVAILABLE || !strings.Contains(err.Error(), "migrate up") {
		t.Fatalf("check on an empty database: %v, want a refusal that says to migrate", err)
	}
}

func TestBadCompatibilityDeclarationsAreRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, sql := range []string{
		"-- pushproxy:compatible-with 0\nSELECT 1;\n",
		"-- pushproxy:compatible-with 999\nSELECT 1;\n",
		"-- pushproxy:compatible-with four\nSELECT 1;\n",
		"-- pushproxy:compatible-with 1\n-- pushproxy:compatible-with 2\nSELECT 1;\n",
	} {
		url := migratedDatabase(t)
		if err := store.MigrateFS(ctx, url, release(t, sql), nil); err == nil || !strings.Contains(err.Error(), "compatible-with") {
			t.Errorf("migration %q: %v, want refused", sql, err)
		}
	}
}

// TestCompatibilityOfOlderDatabasesIsRecorded: a database migrated by a release that recorded
// no compatibility gets the records of the migrations this binary knows at its next
// migrate, and an expansion after that is accepted by this binary.
func TestCompatibilityOfOlderDatabasesIsRecorded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := migratedDatabase(t)
	st := open(t, url, nil)
	if _, err := st.Pool().Exec(ctx, `DROP TABLE pushproxy_schema_compat`); err != nil {
		t.Fatal(err)
	}
	status, err := store.GetMigrationStatus(ctx, url)
	if err != nil || status.OldestCompatible != status.Current {
		t.Fatalf("status without records: %+v, %v", status, err)
	}
	if err := store.CheckSchema(ctx, url); err != nil {
		t.Fatal(err)
	}
	expand := fmt.Sprintf("-- pushproxy:compatible-with %d\nALTER TABLE streams ADD COLUMN future_note text;\n", status.Latest)
	if err := store.MigrateFS(ctx, url, release(t, expand), nil); err != nil {
		t.Fatal(err)
	}
	var n int32
	if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM pushproxy_schema_compat`).Scan(&n); err != nil || n != status.Latest+1 {
		t.Fatalf("%d records (%v), want %d", n, err, status.Latest+1)
	}
	if err := store.CheckSchema(ctx, url); err != nil {
		t.Fatalf("after the expansion: %v", err)
	}
}
