package pglocal

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestClusterListensOnlyOnAPrivateSocket starts a cluster as `pushproxy serve` does: it has no
// TCP listener at all, its socket sits in a directory of mode 0700 inside the data directory
// owned by the server's user, and its URL reaches it through that socket. A data directory too
// deep for a Unix socket's path gets a private temporary socket directory, removed on Stop.
func TestClusterListensOnlyOnAPrivateSocket(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	t.Parallel()
	dir := reachableDir(t)
	deep := filepath.Join(dir, strings.Repeat("d", 60), strings.Repeat("e", 60))
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, dataDir string
		inside        bool
	}{{"short", filepath.Join(dir, "pg"), true}, {"deep", filepath.Join(deep, "pg"), false}} {
		pg, err := Start(t.Context(), Options{DataDir: c.dataDir, Fast: true})
		if err != nil {
			t.Fatal(err)
		}
		sock := pg.SocketDir()
		if got := filepath.Dir(sock) == pg.Dir(); got != c.inside {
			t.Errorf("%s: socket directory %s inside the data directory: %v, want %v", c.name, sock, got, c.inside)
		}
		fi, err := os.Stat(sock)
		if err != nil {
			t.Fatal(err)
		}
		owner, _ := os.Stat(pg.Dir())
		if fi.Mode().Perm() != 0o700 || fi.Sys().(*syscall.Stat_t).Uid != owner.Sys().(*syscall.Stat_t).Uid {
			t.Errorf("%s: socket directory mode %o uid %d, want 700 and the data directory's owner %d", c.name,
				fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Uid, owner.Sys().(*syscall.Stat_t).Uid)
		}
		if !strings.Contains(pg.URL("postgres"), "host="+strings.ReplaceAll(sock, "/", "%2F")) {
			t.Errorf("%s: URL %s does not name the socket", c.name, pg.URL("postgres"))
		}
		conn, err := pgx.Connect(t.Context(), pg.URL("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		var listen, sockets string
		var tcp *string
		err = conn.QueryRow(t.Context(), `SELECT current_setting('listen_addresses'), current_setting('unix_socket_directories'), inet_server_addr()::text`).Scan(&listen, &sockets, &tcp)
		conn.Close(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if listen != "" || sockets != sock || tcp != nil {
			t.Errorf("%s: listen_addresses %q, unix_socket_directories %q, connected over TCP to %v", c.name, listen, sockets, tcp)
		}
		if err := pg.Stop(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(sock); c.inside == os.IsNotExist(err) {
			t.Errorf("%s: after Stop, socket directory exists: %v", c.name, err == nil)
		}
	}
}

// reachableDir is a temporary directory, removed when the test ends, in which the postgres
// user can reach a data directory when the tests run as root (t.TempDir's are private).
// (pgtest.ReachableDir, which this package cannot import.)
func reachableDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pglocal-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
