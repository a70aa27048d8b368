package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"

	"github.com/pushproxy/pushproxy/internal/pglocal"
	"github.com/pushproxy/pushproxy/store"
)

func migrateCommand() command {
	return command{
		name:    "migrate",
		args:    "[up|status]",
		summary: "apply the database migrations (up, the default), or show them (status)",
		about: `Applies the pending database migrations (up, the default) or shows the schema version
(status). Without a database URL it works on the local Postgres in --data-dir, as serve does.`,
		nargs: func(args []string) error {
			if len(args) > 1 || len(args) == 1 && args[0] != "up" && args[0] != "status" {
				return fmt.Errorf("unexpected argument %q (the action is up or status)", args[len(args)-1])
			}
			return nil
		},
		setup: func(fs *flag.FlagSet) runFunc {
			var (
				dbURL, dataDir string
				lc             logConfig
			)
			fs.StringVar(&dbURL, "database-url", "", "Postgres URL (DATABASE_URL is read too); empty: the local Postgres in --data-dir")
			fs.StringVar(&dataDir, "data-dir", "pushproxy-data", "data directory of the local Postgres, when no database URL is given")
			lc.flags(fs, "info")
			return func(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
				action := "up"
				if len(args) == 1 {
					action = args[0]
				}
				return runMigrate(ctx, action, dbURL, dataDir, lc.logger(stderr), stdout, stderr, getenv)
			}
		},
	}
}

func runMigrate(ctx context.Context, action, dbURL, dataDir string, log *slog.Logger, stdout, stderr io.Writer, getenv func(string) string) int {
	url := databaseURL(dbURL, getenv)
	if url == "" {
		dir, err := filepath.Abs(dataDir)
		if err != nil {
			fmt.Fprintln(stderr, "pushproxy migrate:", err)
			return 1
		}
		pg, err := pglocal.Start(ctx, pglocal.Options{DataDir: filepath.Join(dir, "postgres"), Logger: log})
		if err != nil {
			fmt.Fprintln(stderr, "pushproxy migrate: local postgres:", err)
			return 1
		}
		defer pg.Stop()
		if err := pg.CreateDatabase(ctx, "pushproxy"); err != nil {
			fmt.Fprintln(stderr, "pushproxy migrate: local postgres:", err)
			return 1
		}
		url = pg.URL("pushproxy")
	}
	if action == "up" {
		if err := store.Migrate(ctx, url, log); err != nil {
			fmt.Fprintln(stderr, "pushproxy migrate:", err)
			return 1
		}
	}
	st, err := store.GetMigrationStatus(ctx, url)
	if err != nil {
		fmt.Fprintln(stderr, "pushproxy migrate:", err)
		return 1
	}
	for i, name := range st.Names {
		mark := "pending"
		if int32(i) < st.Current {
			mark = "applied"
		}
		fmt.Fprintf(stdout, "%3d  %-8s %s (code of version %d on)\n", i+1, mark, name, st.Compat[i])
	}
	fmt.Fprintf(stdout, "schema version %d of %d\n", st.Current, st.Latest)
	if st.Current > st.Latest {
		fmt.Fprintf(stdout, "the database is newer than this binary; code of version %d on runs on it\n", st.OldestCompatible)
	}
	log.Debug("migrate done", slog.String("action", action))
	return 0
}
