// Package pglocal runs a private PostgreSQL cluster from the server binaries installed on the
// machine: `pushproxy serve` uses it when no database URL is given, and tests and benchmarks
// use it for a throwaway cluster.
//
// The cluster trusts its "postgres" role, so it listens only where nobody else reaches: a Unix
// socket in a directory of mode 0700 inside its data directory (no TCP at all), which only its
// owner (and root) can enter. Throwaway test clusters may ask for TCP on 127.0.0.1 instead
// (Options.TCP), for tools given a host and port; a cluster that keeps data never should.
// PostgreSQL refuses to run as root; when the caller is root, initdb and postgres run as the
// "postgres" system user and the data directory is handed to that user.
package pglocal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options configure a cluster. The zero value is a throwaway cluster in a temporary directory.
type Options struct {
	// DataDir holds the cluster. It is created and initialised when it holds no cluster yet,
	// and kept on Stop. Empty means a temporary directory removed on Stop.
	DataDir string
	// BinDir holds initdb and postgres. Empty means the PGBIN environment variable, then
	// the newest /usr/lib/postgresql/*/bin, then PATH.
	BinDir string
	// TCP makes the server listen on 127.0.0.1:Port, with trust authentication, instead of
	// the private Unix socket: for throwaway test clusters only, since any local user can
	// then connect as the superuser.
	TCP bool
	// Port to listen on at 127.0.0.1 with TCP (0 picks a free one); without TCP, the number
	// in the socket's name (0: 5432).
	Port int
	// Fast turns off fsync and full-page writes: for throwaway test clusters only, where a
	// power cut may lose everything anyway. Never for data that must survive.
	Fast bool
	// Settings are extra server settings (name → value), passed as -c name=value.
	Settings map[string]string
	// Logger receives progress messages; nil discards them.
	Logger *slog.Logger
	// StartTimeout bounds the wait for the server to accept connections (default 60s).
	StartTimeout time.Duration
}

// Cluster is a running PostgreSQL server owned by this process.
type Cluster struct {
	dir       string
	throwaway bool
	port      int
	socketDir string // without TCP: the directory of the Unix socket
	tempSock  bool   // socketDir is a temporary directory of its own, removed on Stop
	cmd       *exec.Cmd
	exited    chan struct{}
	exitErr   error
	logFile   *os.File
	log       *slog.Logger
	stopOnce  sync.Once
	stopErr   error
}

// Start initialises the data directory if needed, starts the server and waits until it
// accepts connections.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	bin, err := findBinDir(opts.BinDir)
	if err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}

	c := &Cluster{dir: opts.DataDir, log: log, exited: make(chan struct{})}
	if c.dir == "" {
		c.dir, err = os.MkdirTemp("", "pushproxy-pg-")
		if err != nil {
			return nil, fmt.Errorf("pglocal: %w", err)
		}
		c.throwaway = true
	} else if c.dir, err = filepath.Abs(c.dir); err != nil {
		return nil, fmt.Errorf("pglocal: %w", err)
	}
	fail := func(err error) (*Cluster, error) {
		if c.throwaway {
			os.RemoveAll(c.dir)
		}
		return nil, err
	}
	// The parents must stay searchable by the postgres user; the cluster itself is private.
	if err := os.MkdirAll(filepath.Dir(c.dir), 0o755); err != nil {
		return fail(fmt.Errorf("pglocal: create data directory: %w", err))
	}
	if err := os.Mkdir(c.dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fail(fmt.Errorf("pglocal: create data directory: %w", err))
	}
	if cred != nil {
		if err := handOver(c.dir, cred); err != nil {
			return fail(err)
		}
	}

	if _, err := os.Stat(filepath.Join(c.dir, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		log.InfoContext(ctx, "initialising local postgres cluster", slog.String("dir", c.dir))
		initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"),
			"-D", c.dir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-instructions")
		initdb.Env = childEnv()
		initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		if out, err := initdb.CombinedOutput(); err != nil {
			return fail(fmt.Errorf("pglocal: initdb: %w: %s", err, lastLines(out, 5)))
		}
	} else if err != nil {
		return fail(fmt.Errorf("pglocal: %w", err))
	}

	timeout := opts.StartTimeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	if !opts.TCP {
		c.port = cmpOr(opts.Port, 5432)
		if err := c.makeSocketDir(cred); err != nil {
			return fail(err)
		}
		if err := c.start(ctx, bin, cred, opts, timeout); err != nil {
			c.removeTempSocket()
			return fail(err)
		}
		log.InfoContext(ctx, "local postgres running", slog.String("dir", c.dir), slog.String("socket_dir", c.socketDir))
		return c, nil
	}
	for attempt := 0; ; attempt++ {
		c.port = opts.Port
		if c.port == 0 {
			if c.port, err = freePort(); err != nil {
				return fail(err)
			}
		}
		err = c.start(ctx, bin, cred, opts, timeout)
		if err == nil {
			break
		}
		// Another process may have taken the port between freePort and postgres binding it.
		if opts.Port != 0 || attempt >= 3 || !errors.Is(err, errExited) {
			return fail(err)
		}
		c.exited = make(chan struct{})
	}
	log.InfoContext(ctx, "local postgres running", slog.String("dir", c.dir), slog.Int("port", c.port))
	return c, nil
}

var errExited = errors.New("postgres exited")

// maxSocketPath is the longest path of a Unix socket (sun_path holds 108 bytes with the NUL).
const maxSocketPath = 107

// makeSocketDir makes the directory of the server's Unix socket, mode 0700 and owned by the
// server's user: "socket" inside the data directory, or, when the socket's path would be too
// long for a Unix socket there, a private temporary directory.
func (c *Cluster) makeSocketDir(cred *syscall.Credential) error {
	c.socketDir = filepath.Join(c.dir, "socket")
	if len(c.socketPath()) > maxSocketPath {
		dir, err := os.MkdirTemp("", "pushproxy-pgsock-")
		if err != nil {
			return fmt.Errorf("pglocal: socket directory: %w", err)
		}
		c.socketDir, c.tempSock = dir, true
		if len(c.socketPath()) > maxSocketPath {
			c.removeTempSocket()
			return fmt.Errorf("pglocal: no socket directory short enough for a Unix socket (set TMPDIR to a short path)")
		}
	} else if err := os.Mkdir(c.socketDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("pglocal: socket directory: %w", err)
	}
	if err := os.Chmod(c.socketDir, 0o700); err != nil {
		c.removeTempSocket()
		return fmt.Errorf("pglocal: socket directory: %w", err)
	}
	if cred != nil {
		if err := os.Lchown(c.socketDir, int(cred.Uid), int(cred.Gid)); err != nil {
			c.removeTempSocket()
			return fmt.Errorf("pglocal: hand the socket directory to the postgres user: %w", err)
		}
	}
	return nil
}

func (c *Cluster) socketPath() string {
	return filepath.Join(c.socketDir, ".s.PGSQL."+strconv.Itoa(c.port))
}

func (c *Cluster) removeTempSocket() {
	if c.tempSock {
		os.RemoveAll(c.socketDir)
	}
}

func cmpOr(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

func (c *Cluster) start(ctx context.Context, bin string, cred *syscall.Credential, opts Options, timeout time.Duration) error {
	var err error
	c.logFile, err = os.OpenFile(filepath.Join(filepath.Dir(c.dir), filepath.Base(c.dir)+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("pglocal: open log: %w", err)
	}
	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"port":                    strconv.Itoa(c.port),
		"unix_socket_directories": "",
		"max_connections":         "300",
	}
	if c.socketDir != "" {
		settings["listen_addresses"] = ""
		settings["unix_socket_directories"] = c.socketDir
		settings["unix_socket_permissions"] = "0700"
	}
	if opts.Fast {
		settings["fsync"] = "off"
		settings["full_page_writes"] = "off"
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	args := []string{"-D", c.dir}
	for _, k := range keys {
		args = append(args, "-c", k+"="+settings[k])
	}
	// Not CommandContext: the server outlives the start-up context and is stopped by Stop.
	c.cmd = exec.Command(filepath.Join(bin, "postgres"), args...)
	c.cmd.Env = childEnv()
	c.cmd.Stdout = c.logFile
	c.cmd.Stderr = c.logFile
	// If this process dies without Stop, the kernel tells postgres to shut down at once
	// (SIGQUIT), so no orphan server keeps the data directory locked.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT, Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		c.logFile.Close()
		return fmt.Errorf("pglocal: start postgres: %w", err)
	}
	go func() {
		c.exitErr = c.cmd.Wait()
		close(c.exited)
	}()

	deadline := time.Now().Add(timeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, c.URL("postgres"))
		cancel()
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case <-c.exited:
			c.logFile.Close()
			return fmt.Errorf("pglocal: %w (%v); its log %s ends with: %s", errExited, c.exitErr, c.logFile.Name(), tailFile(c.logFile.Name(), 5))
		case <-ctx.Done():
			c.kill()
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.kill()
			return fmt.Errorf("pglocal: postgres did not accept connections within %s; see %s", timeout, c.logFile.Name())
		}
	}
}

// URL is the connection URL of database db on the cluster: through its Unix socket, or
// 127.0.0.1 with TCP.
func (c *Cluster) URL(db string) string {
	if c.socketDir != "" {
		q := url.Values{"host": {c.socketDir}, "port": {strconv.Itoa(c.port)}, "sslmode": {"disable"}}
		return (&url.URL{Scheme: "postgres", User: url.User("postgres"), Path: "/" + db, RawQuery: q.Encode()}).String()
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, db)
}

// Port is the TCP port the server listens on at 127.0.0.1 (with TCP), or the number in its
// socket's name.
func (c *Cluster) Port() int { return c.port }

// SocketDir is the directory of the server's Unix socket ("" with TCP).
func (c *Cluster) SocketDir() string { return c.socketDir }

// Dir is the data directory.
func (c *Cluster) Dir() string { return c.dir }

// CreateDatabase creates database name unless it exists.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) error {
	return CreateDatabase(ctx, c.URL("postgres"), name)
}

// CreateDatabase creates database name on the server at serverURL unless it exists.
func CreateDatabase(ctx context.Context, serverURL, name string) error {
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return fmt.Errorf("pglocal: connect: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("pglocal: %w", err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("pglocal: create database %s: %w", name, err)
	}
	return nil
}

// Stop shuts the server down (fast shutdown: sessions are disconnected, everything committed
// is kept) and removes a throwaway data directory. It is safe to call more than once.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		_ = c.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-c.exited:
		case <-time.After(30 * time.Second):
			c.log.Warn("postgres did not stop within 30s; killing it")
			c.kill()
		}
		c.logFile.Close()
		c.removeTempSocket()
		if c.throwaway {
			c.stopErr = os.RemoveAll(c.dir)
			os.Remove(c.logFile.Name())
		}
	})
	return c.stopErr
}

func (c *Cluster) kill() {
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	<-c.exited
}

// credential is the identity to run the server binaries with: nil when the caller is not
// root, the postgres system user when it is.
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pglocal: running as root, and PostgreSQL refuses to run as root, but there is no postgres user to run it as: %w", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("pglocal: bad uid/gid for user postgres: %s/%s", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

// handOver gives dir to the postgres user and checks that user can reach it.
func handOver(dir string, cred *syscall.Credential) error {
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(cred.Uid), int(cred.Gid))
	})
	if err != nil {
		return fmt.Errorf("pglocal: hand %s to the postgres user: %w", dir, err)
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("pglocal: %w", err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("pglocal: the postgres user cannot reach %s: %s is not searchable by others (chmod o+x it, or choose another data directory)", dir, p)
		}
		if p == "/" {
			return nil
		}
	}
}

func findBinDir(dir string) (string, error) {
	if dir == "" {
		dir = os.Getenv("PGBIN")
	}
	if dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "postgres")); err != nil {
			return "", fmt.Errorf("pglocal: no postgres binary in %s", dir)
		}
		return dir, nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	sort.Slice(matches, func(i, j int) bool { return version(matches[i]) > version(matches[j]) })
	if len(matches) > 0 {
		return filepath.Dir(matches[0]), nil
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("pglocal: PostgreSQL server binaries not found (install the postgresql package, set PGBIN, or give a database URL)")
}

func version(bin string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(bin))))
	return v
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pglocal: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func childEnv() []string {
	return []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "LANG=C", "TZ=UTC"}
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func tailFile(name string, n int) string {
	f, err := os.Open(name)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > 8192 {
		f.Seek(-8192, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	return lastLines(b, n)
}
