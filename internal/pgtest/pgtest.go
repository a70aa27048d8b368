// Package pgtest gives tests a real PostgreSQL: the server at DATABASE_URL when it is set,
// otherwise a throwaway cluster that pglocal starts for the test binary. Each test gets a
// database of its own.
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
//	func TestX(t *testing.T) { url := pgtest.NewDatabase(t); ... }
package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy/internal/pglocal"
)

var (
	serverURL string // maintenance database URL ("postgres" database) of the server in use
	cluster   *pglocal.Cluster
	seq       atomic.Int64
)

// Main starts the server the tests use, runs them and stops it. It returns m.Run's code.
func Main(m *testing.M) int {
	if u := os.Getenv("DATABASE_URL"); u != "" {
		serverURL = u
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	c, err := pglocal.Start(ctx, pglocal.Options{Fast: true, TCP: true})
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: cannot start a throwaway PostgreSQL (set DATABASE_URL to use an existing server): %v\n", err)
		return 1
	}
	cluster = c
	serverURL = c.URL("postgres")
	code := m.Run()
	if err := c.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: stop: %v\n", err)
	}
	return code
}

// ServerURL is the URL of the server's maintenance database.
func ServerURL(tb testing.TB) string {
	tb.Helper()
	if serverURL == "" {
		tb.Fatal("pgtest: Main was not called from TestMain")
	}
	return serverURL
}

// NewDatabase creates an empty database for the test and returns its URL. The database is
// dropped when the test ends.
func NewDatabase(tb testing.TB) string {
	tb.Helper()
	su := ServerURL(tb)
	name := fmt.Sprintf("pushproxy_test_%d_%d", os.Getpid(), seq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, su)
	if err != nil {
		tb.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE template0"); err != nil {
		tb.Fatalf("pgtest: create database: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, su)
		if err != nil {
			tb.Errorf("pgtest: connect: %v", err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			tb.Errorf("pgtest: drop database: %v", err)
		}
	})
	return WithDatabase(tb, su, name)
}

// WithDatabase returns serverURL with its database replaced by name.
func WithDatabase(tb testing.TB, serverURL, name string) string {
	tb.Helper()
	u, err := url.Parse(serverURL)
	if err != nil {
		tb.Fatalf("pgtest: DATABASE_URL is not a URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// Cluster is a PostgreSQL cluster of the test's own, which the test may stop and start again
// to play an outage: never the shared server, which other tests use meanwhile.
type Cluster struct {
	tb   testing.TB
	opts pglocal.Options
	c    *pglocal.Cluster
}

// ReachableDir is a temporary directory, removed when the test ends, in which the postgres
// user can reach a data directory when the tests run as root (t.TempDir's are private).
func ReachableDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	return dir
}

// NewCluster starts a cluster for the test, stopped and removed when the test ends.
func NewCluster(tb testing.TB) *Cluster {
	tb.Helper()
	dir := ReachableDir(tb)
	c := &Cluster{tb: tb, opts: pglocal.Options{DataDir: filepath.Join(dir, "pg"), Fast: true, TCP: true}}
	c.Start()
	tb.Cleanup(func() {
		if c.c != nil {
			c.c.Stop()
		}
	})
	return c
}

// Start starts the cluster (again), on the port it had.
func (c *Cluster) Start() {
	c.tb.Helper()
	if c.c != nil {
		c.tb.Fatal("pgtest: the cluster is running")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pglocal.Start(ctx, c.opts)
	if err != nil {
		c.tb.Fatalf("pgtest: start cluster: %v", err)
	}
	c.c, c.opts.Port = pg, pg.Port()
}

// Stop shuts the cluster down (fast shutdown: sessions are ended), keeping its data.
func (c *Cluster) Stop() {
	c.tb.Helper()
	if c.c == nil {
		c.tb.Fatal("pgtest: the cluster is not running")
	}
	if err := c.c.Stop(); err != nil {
		c.tb.Fatalf("pgtest: stop cluster: %v", err)
	}
	c.c = nil
}

// Port is the cluster's TCP port on 127.0.0.1, the same across restarts.
func (c *Cluster) Port() int { return c.opts.Port }

// NewDatabase creates an empty database on the cluster and returns its URL.
func (c *Cluster) NewDatabase(name string) string {
	c.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.c.CreateDatabase(ctx, name); err != nil {
		c.tb.Fatalf("pgtest: %v", err)
	}
	return c.c.URL(name)
}
