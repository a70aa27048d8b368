package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy/internal/seal"
	"github.com/pushproxy/pushproxy/origin"
	"github.com/pushproxy/pushproxy/wakeup/fakeapns"
)

// child is a process started by the benchmark, with the lines it prints.
type child struct {
	cmd   *exec.Cmd
	lines chan string
}

func startChild(ctx context.Context, env []string, bin string, args ...string) (*child, error) {
	c := &child{cmd: exec.CommandContext(ctx, bin, args...), lines: make(chan string, 256)}
	c.cmd.Env = append(append(os.Environ(), "GOMAXPROCS=2"), env...)
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	c.cmd.Stderr = c.cmd.Stdout
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case c.lines <- sc.Text():
			default:
			}
		}
		close(c.lines)
	}()
	return c, nil
}

func (c *child) waitLines(re *regexp.Regexp, n int) ([]string, error) {
	var got []string
	timeout := time.After(time.Minute)
	for len(got) < n {
		select {
		case l, ok := <-c.lines:
			if !ok {
				return nil, fmt.Errorf("%s exited", c.cmd.Path)
			}
			if m := re.FindStringSubmatch(l); m != nil {
				got = append(got, m[1])
			}
		case <-timeout:
			return nil, fmt.Errorf("%s did not print %s", c.cmd.Path, re)
		}
	}
	return got, nil
}

func (c *child) stop() {
	c.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// rssKiB reads a process's resident set size.
func rssKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return -1
}

func buildBinaries() (string, error) {
	dir, err := os.MkdirTemp("", "pushproxy-bench-")
	if err != nil {
		return "", err
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(gobin, "build", "-o", dir+"/", "github.com/pushproxy/pushproxy/cmd/pushproxy", "github.com/pushproxy/pushproxy/cmd/origin")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return dir, nil
}

func runHeld(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("held", flag.ExitOnError)
	n := fs.Int("streams", 50000, "streams to hold")
	proto := fs.String("proto", "h2", "upstream protocol: h2 (h2c, streams share connections) or h1 (a connection per stream)")
	addrs := fs.Int("origin-addrs", 8, "origin listens on this many addresses 127.0.0.2, 127.0.0.3, ...")
	settle := fs.Duration("settle", 30*time.Second, "time to let the proxy settle before reading its RSS")
	dbURL := fs.String("database-url", "", "Postgres to use (empty: a private durable cluster)")
	debug := fs.String("debug-listen", "", "passed to the proxy as --admin-listen: serve its profiler (and /metrics) there (empty: off)")
	hold := fs.Bool("hold", false, "after measuring, keep everything running until interrupted (to profile)")
	maxStreams := fs.Int("origin-max-streams", 0, "serve the reference origin in this process behind an HTTP/2 server allowing this many concurrent streams per connection (nginx: 128, Go: 250), so that the proxy needs a connection per so many streams; 0: run the origin binary, which allows a million")
	originTLS := fs.Bool("origin-tls", false, "with --origin-max-streams: serve the origin over TLS (HTTP/2 by ALPN; the proxy trusts a throwaway CA through SSL_CERT_FILE) instead of cleartext")
	fs.Parse(args)
	if *originTLS && *maxStreams == 0 {
		return errors.New("--origin-tls needs --origin-max-streams")
	}

	dir, err := buildBinaries()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	url, stopPG, err := startPostgres(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer stopPG()

	var (
		origins   []string
		env       []string
		originRSS func() int64
	)
	if *maxStreams > 0 {
		var stop func()
		origins, env, stop, err = serveLimitedOrigin(ctx, *addrs, *maxStreams, *originTLS, dir)
		if err != nil {
			return err
		}
		defer stop()
		originRSS = func() int64 { return rssKiB(os.Getpid()) }
	} else {
		var listen []string
		for i := 0; i < *addrs; i++ {
			listen = append(listen, fmt.Sprintf("127.0.0.%d:0", i+2))
		}
		org, err := startChild(ctx, nil, filepath.Join(dir, "origin"), "--listen", strings.Join(listen, ","), "--rate", "0", "--log-level", "warn")
		if err != nil {
			return err
		}
		defer org.stop()
		if origins, err = org.waitLines(regexp.MustCompile(`listening on (http://\S+)`), *addrs); err != nil {
			return err
		}
		originRSS = func() int64 { return rssKiB(org.cmd.Process.Pid) }
	}
	keyFile := filepath.Join(dir, "secret-keys.json")
	if _, _, err := seal.LoadOrCreate(keyFile); err != nil {
		return err
	}
	pargs := []string{"serve", "--listen", "127.0.0.1:0", "--database-url", url, "--upstream-allow", "127.0.0.0/8",
		"--db-max-conns", "10", "--claim-interval", "1h", "--secret-key-file", keyFile,
		"--handoff-rate-per-address", "0"} // every handoff comes from this one address
	if *proto == "h2" && !*originTLS {
		pargs = append(pargs, "--upstream-h2c")
	}
	pargs = append(pargs, "--admin-listen", *debug)
	px, err := startChild(ctx, env, filepath.Join(dir, "pushproxy"), pargs...)
	if err != nil {
		return err
	}
	defer px.stop()
	apiAddr, err := px.waitLines(regexp.MustCompile(`msg="pushproxy serving" addr=(\S+)`), 1)
	if err != nil {
		return err
	}
	api := "http://" + apiAddr[0]
	time.Sleep(2 * time.Second) // let the freshly started process reach its steady state
	base := rssKiB(px.cmd.Process.Pid)
	limit := "a million (the origin binary)"
	if *maxStreams > 0 {
		limit = fmt.Sprint(*maxStreams)
	}
	fmt.Printf("held: %d streams over %s%s to %d origin addresses allowing %s streams per connection; proxy RSS at start %d KiB\n",
		*n, *proto, map[bool]string{true: " with TLS", false: ""}[*originTLS], *addrs, limit, base)

	t0 := time.Now()
	if err := handoffStreams(api, origins, *n); err != nil {
		return err
	}
	fmt.Printf("  handed off %d streams in %s\n", *n, time.Since(t0).Round(time.Millisecond))

	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for {
		var connected int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM streams WHERE connected").Scan(&connected); err != nil {
			return err
		}
		if connected == *n {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
			fmt.Printf("  %d of %d upstreams connected\n", connected, *n)
		}
	}
	fmt.Printf("  all %d upstreams connected after %s\n", *n, time.Since(t0).Round(time.Millisecond))
	var peak, last int64
	for end := time.Now().Add(*settle); time.Now().Before(end); {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Second):
		}
		last = rssKiB(px.cmd.Process.Pid)
		peak = max(peak, last)
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", px.cmd.Process.Pid))
	fmt.Printf("result: proxy RSS %d KiB with %d held streams (peak %d KiB while settling), %d open files: %.2f KiB per stream over the start-up RSS; origin RSS %d KiB\n",
		last, *n, peak, len(fds), float64(last-base)/float64(*n), originRSS())
	if *hold {
		<-ctx.Done()
	}
	return nil
}

// serveLimitedOrigin serves the reference origin (no ticks) in this process on addrs
// addresses 127.0.0.2, 127.0.0.3, ..., behind its HTTP/2 server with its stream limit
// lowered to maxStreams, over TLS or cleartext (HTTP/1.1 and h2c). It returns the origins'
// URLs, the environment that makes the proxy trust them, and a function that stops them.
func serveLimitedOrigin(ctx context.Context, addrs, maxStreams int, tlsOn bool, dir string) ([]string, []string, func(), error) {
	opts := origin.DefaultOptions()
	opts.Rate = 0
	org := origin.New(&opts)
	org.Start(ctx)
	var (
		urls []string
		env  []string
		srvs []*http.Server
	)
	stop := func() {
		org.Close() // before the servers: it ends the streams
		for _, srv := range srvs {
			srv.Close()
		}
	}
	var cert tls.Certificate
	if tlsOn {
		ca, err := fakeapns.NewCA()
		if err != nil {
			return nil, nil, nil, err
		}
		var hosts []string
		for i := 0; i < addrs; i++ {
			hosts = append(hosts, fmt.Sprintf("127.0.0.%d", i+2))
		}
		if cert, err = ca.ServerCertificate(hosts...); err != nil {
			return nil, nil, nil, err
		}
		caFile := filepath.Join(dir, "origin-ca.pem")
		if err := ca.WriteCertFile(caFile); err != nil {
			return nil, nil, nil, err
		}
		env = append(env, "SSL_CERT_FILE="+caFile)
	}
	for i := 0; i < addrs; i++ {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:0", i+2))
		if err != nil {
			stop()
			return nil, nil, nil, err
		}
		srv := org.HTTPServer()
		srv.HTTP2.MaxConcurrentStreams = maxStreams // read by the HTTP/2 server per connection
		srvs = append(srvs, srv)
		if tlsOn {
			srv.TLSConfig.Certificates = []tls.Certificate{cert}
			go srv.ServeTLS(ln, "", "")
			urls = append(urls, "https://"+ln.Addr().String())
		} else {
			go srv.Serve(ln)
			urls = append(urls, "http://"+ln.Addr().String())
		}
	}
	return urls, env, stop, nil
}

// handoffStreams hands n streams off to api from 32 workers, stream i reading
// origins[i % len(origins)] (a distinct URL each), and returns the first failure.
func handoffStreams(api string, origins []string, n int) error {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	return forEachParallel(n, 32, func(i int) error {
		body := fmt.Sprintf(`{"url": "%s/events?s=%d"}`, origins[i%len(origins)], i)
		resp, err := client.Post(api+"/v1/streams", "application/json", strings.NewReader(body))
		if err != nil {
			return err
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("handoff: %s: %s", resp.Status, bytes.TrimSpace(out))
		}
		return nil
	})
}

// forEachParallel calls f(i) for every i in [0, n) from workers goroutines, and returns the
// first error (a worker that fails stops; the others go on).
func forEachParallel(n, workers int, f func(i int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				if err := f(int(i)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
