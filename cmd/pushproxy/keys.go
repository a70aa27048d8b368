package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/pushproxy/pushproxy/internal/pglocal"
	"github.com/pushproxy/pushproxy/internal/seal"
	"github.com/pushproxy/pushproxy/store"
)

// keyFileName is the key file the local-Postgres mode keeps in its data directory.
const keyFileName = "secret-keys.json"

// keyConfig is how serve finds the keys that seal forwarded credentials.
type keyConfig struct {
	File           string
	AllowPlaintext bool
}

func (c *keyConfig) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.File, "secret-key-file", "", "key file sealing forwarded header values and URL queries at rest (AES-256-GCM; make one with `pushproxy keys generate`); empty with the local Postgres: "+keyFileName+" in --data-dir, made on first start")
	fs.BoolVar(&c.AllowPlaintext, "insecure-plaintext-credentials", false, "with an external database and no --secret-key-file, store forwarded credentials in clear instead of refusing to start")
}

// keys returns the keys serve seals with (nil: in clear, as allowed). With the local
// Postgres and no key file, the key file in dataDir is used, made on the first start.
// With an external database, serve refuses to start without a key file unless told to
// store credentials in clear.
func (c *keyConfig) keys(ctx context.Context, local bool, dataDir string, log *slog.Logger) (*seal.Keys, error) {
	switch {
	case c.File != "" && c.AllowPlaintext:
		return nil, errors.New("--secret-key-file and --insecure-plaintext-credentials: choose one")
	case c.File != "":
		return seal.Load(c.File)
	case c.AllowPlaintext:
		log.WarnContext(ctx, "forwarded credentials are stored in clear (--insecure-plaintext-credentials)")
		return nil, nil
	case !local:
		return nil, errors.New("no --secret-key-file: with an external database, forwarded credentials are sealed under a key file you keep " +
			"(make one with `pushproxy keys generate --secret-key-file FILE`); --insecure-plaintext-credentials stores them in clear instead")
	}
	// The data directory holds the local Postgres too, whose server runs as the postgres
	// user when we are root: it must be able to pass through (the key file itself is 0600).
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(dataDir, keyFileName)
	k, created, err := seal.LoadOrCreate(path)
	if err != nil {
		return nil, err
	}
	if created {
		log.InfoContext(ctx, "made a key for sealing forwarded credentials; back it up with the database", slog.String("file", path))
	}
	return k, nil
}

const keysAbout = `To rotate: keys generate; restart every instance with the new file (they seal under the new
key and open both); keys rotate; copy the file to every instance again (a restart is not
needed: they only keep the removed key in memory). Without --secret-key-file, the file is
` + keyFileName + ` in --data-dir.`

// keysCommands are "keys generate" and "keys rotate".
func keysCommands() []command {
	keyFlags := func(fs *flag.FlagSet, file, dataDir *string) {
		fs.StringVar(file, "secret-key-file", "", "the key file (empty: "+keyFileName+" in --data-dir)")
		fs.StringVar(dataDir, "data-dir", "pushproxy-data", "data directory of the local Postgres and its key file")
	}
	keyFile := func(file, dataDir string) string {
		if file == "" {
			return filepath.Join(dataDir, keyFileName)
		}
		return file
	}
	fail := func(stderr io.Writer, action string, err error) int {
		if err != nil {
			fmt.Fprintf(stderr, "pushproxy keys %s: %v\n", action, err)
			return exitError
		}
		return exitOK
	}
	return []command{
		{
			name:    "keys generate",
			summary: "make a key file, or add a new primary key to it (the old keys stay, to open what they sealed)",
			about: `Makes a key file of one key, or adds a new primary key to an existing one (the old keys
stay, to open what they sealed); --if-missing leaves an existing file alone.

` + keysAbout,
			setup: func(fs *flag.FlagSet) runFunc {
				var (
					file, dataDir string
					ifMissing     bool
				)
				keyFlags(fs, &file, &dataDir)
				fs.BoolVar(&ifMissing, "if-missing", false, "only make the file when it does not exist (for a deployment's first start)")
				return func(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
					return fail(stderr, "generate", generateKeys(keyFile(file, dataDir), ifMissing, stdout))
				}
			},
		},
		{
			name:    "keys rotate",
			summary: "re-seal every stream's forwarded credentials under the primary key, then drop the other keys",
			about: `Re-seals every stream's forwarded credentials under the primary key, in batches, while
instances keep running, then removes the other keys from the file.

` + keysAbout,
			setup: func(fs *flag.FlagSet) runFunc {
				var (
					file, dataDir, dbURL string
					keepOld              bool
					lc                   logConfig
					ro                   store.ResealOptions
				)
				keyFlags(fs, &file, &dataDir)
				fs.StringVar(&dbURL, "database-url", "", "Postgres URL (DATABASE_URL is read too); empty: the local Postgres in --data-dir, which must not be running")
				fs.BoolVar(&keepOld, "keep-old-keys", false, "keep the other keys in the file after re-sealing")
				fs.IntVar(&ro.Batch, "reseal-batch", 500, "streams re-sealed per transaction")
				fs.DurationVar(&ro.Pause, "reseal-pause", 10*time.Millisecond, "pause between transactions")
				lc.flags(fs, "info")
				return func(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
					return fail(stderr, "rotate", rotateKeys(ctx, keyFile(file, dataDir), dbURL, dataDir, keepOld, ro, lc.logger(stderr), stdout, getenv))
				}
			},
		},
	}
}

func generateKeys(file string, ifMissing bool, stdout io.Writer) error {
	k, err := seal.Load(file)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
			return err
		}
		k, created, err := seal.LoadOrCreate(file)
		if err != nil {
			return err
		}
		if created {
			fmt.Fprintf(stdout, "wrote %s: key %d (primary)\n", file, k.Primary())
		}
		return nil
	case err != nil:
		return err
	case ifMissing:
		fmt.Fprintf(stdout, "%s exists: primary key %d, keys %v\n", file, k.Primary(), k.IDs())
		return nil
	}
	k, err = k.WithNewPrimary()
	if err != nil {
		return err
	}
	if err := k.WriteFile(file); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "added key %d to %s as primary; keys %v\nrestart every instance with this file, then run `pushproxy keys rotate`\n", k.Primary(), file, k.IDs())
	return nil
}

func rotateKeys(ctx context.Context, file, dbURL, dataDir string, keepOld bool, ro store.ResealOptions, log *slog.Logger, stdout io.Writer, getenv func(string) string) error {
	k, err := seal.Load(file)
	if err != nil {
		return err
	}
	url := databaseURL(dbURL, getenv)
	if url == "" {
		dir, err := filepath.Abs(dataDir)
		if err != nil {
			return err
		}
		pg, err := pglocal.Start(ctx, pglocal.Options{DataDir: filepath.Join(dir, "postgres"), Logger: log})
		if err != nil {
			return fmt.Errorf("local postgres (stop pushproxy serve first): %w", err)
		}
		defer pg.Stop()
		url = pg.URL("pushproxy")
	}
	if err := store.CheckSchema(ctx, url); err != nil {
		return err
	}
	st, err := store.Open(ctx, url, &store.Options{MaxConns: 2, Logger: log, Sealer: k})
	if err != nil {
		return err
	}
	defer st.Close()
	start := time.Now()
	res, err := st.Reseal(ctx, ro)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "re-sealed %d streams under key %d, sealed %d stored in clear, dropped the clear credentials of %d ended streams, in %s\n",
		res.Resealed, k.Primary(), res.Sealed, res.Dropped, time.Since(start).Round(time.Millisecond))
	if res.Failed > 0 {
		fmt.Fprintf(stdout, "failed %d streams whose sealed credentials do not decrypt (damaged or copied from another row)\n", res.Failed)
	}
	if keepOld || len(k.IDs()) == 1 {
		return nil
	}
	k2, err := k.PrimaryOnly()
	if err != nil {
		return err
	}
	if err := k2.WriteFile(file); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "removed keys other than %d from %s\n", k2.Primary(), file)
	return nil
}

// warnUnopenable logs, at start-up, the held streams sealed under keys this instance lacks:
// it never claims them, so without another instance holding those keys they wait unheld.
func warnUnopenable(ctx context.Context, st *store.Store, log *slog.Logger) {
	counts, err := st.UnopenableHeld(ctx)
	if err != nil {
		log.WarnContext(ctx, "could not check the keys of held streams", slog.String("error", err.Error()))
		return
	}
	for _, c := range counts {
		id, _ := seal.KeyID(c.Prefix)
		log.ErrorContext(ctx, "held streams are sealed under a key the key file lacks: this instance leaves them to instances that have it; add the key to --secret-key-file",
			slog.Int64("streams", c.Streams), slog.Uint64("key_id", uint64(id)))
	}
}
