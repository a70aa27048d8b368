package proxytest

import (
	"context"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/proxy"
	"github.com/pushproxy/pushproxy/store"
)

// MigratedDatabase creates a fresh database for the test, migrated, and returns its URL.
func MigratedDatabase(t *testing.T) string {
	t.Helper()
	u := pgtest.NewDatabase(t)
	if err := store.Migrate(context.Background(), u, nil); err != nil {
		t.Fatal(err)
	}
	return u
}

// WithAppName returns dbURL with its sessions' application_name set to name, so that a test
// can find them in pg_stat_activity (and end them).
func WithAppName(t *testing.T, dbURL, name string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("application_name", name)
	u.RawQuery = q.Encode()
	return u.String()
}

// Member is one of several Services started on one database by StartMember.
type Member struct {
	*proxy.Service
	*Bundle
	stopped chan struct{} // closed once Stop returned
}

// StartMember starts a Service (with opts) and its HTTP API on the database at dbURL, which other
// Services may share: several instances of one fleet in one test. Its pool's sessions are
// named <name>-pool and its listener's <name>-listen (application_name); its instance id is
// name unless opts sets one. The test's cleanup stops it, unless the test did.
func StartMember(t *testing.T, dbURL, name string, opts *proxy.Options) *Member {
	t.Helper()
	return startOn(t, dbURL, WithAppName(t, dbURL, name+"-pool"), WithAppName(t, dbURL, name+"-listen"), name, opts, nil)
}

// startOn starts a Service whose store connects to poolURL and whose listener to listenURL,
// both the database at dbURL (which the Bundle reports).
func startOn(t *testing.T, dbURL, poolURL, listenURL, name string, opts *proxy.Options, httpOpts *api.Options) *Member {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, poolURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	o := proxy.Options{}
	if opts != nil {
		o = *opts
	}
	if o.InstanceID == "" {
		o.InstanceID = name
	}
	if o.Upstream == nil {
		o.Upstream, _ = upstream.ParseAllowList([]string{"127.0.0.0/8"})
	}
	if o.UpstreamRetry == 0 {
		o.UpstreamRetry = 20 * time.Millisecond
	}
	if o.UpstreamBackoffMax == 0 {
		o.UpstreamBackoffMax = 200 * time.Millisecond
	}
	svc := proxy.New(st, listenURL, &o)
	if err := svc.Start(ctx); err != nil {
		st.Close()
		t.Fatal(err)
	}
	srv := api.New(svc, st, httpOpts)
	ts := httptest.NewServer(srv.Handler())
	m := &Member{Service: svc, Bundle: &Bundle{API: ts, HTTP: srv, Store: st, DBURL: dbURL}, stopped: make(chan struct{})}
	t.Cleanup(func() {
		m.Stop(t)
		ts.Close()
		st.Close()
	})
	return m
}

// Stop stops the member's Service (within 10 s) and its HTTP API's background work, and fails
// the test if the Service's Stop fails. It is idempotent.
func (m *Member) Stop(t *testing.T) {
	t.Helper()
	select {
	case <-m.stopped:
		return
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- m.Service.Stop(ctx) }()
	m.HTTP.Close()
	if err := <-stopped; err != nil {
		t.Errorf("stop %s: %v", m.InstanceID(), err)
	}
	select {
	case <-m.stopped:
	default:
		close(m.stopped)
	}
}

// StartMemberURLs is StartMember with the URLs of the pool's and the listener's sessions given (a
// test may route one through a proxy of its own).
func StartMemberURLs(t *testing.T, dbURL, poolURL, listenURL, name string, opts *proxy.Options) *Member {
	t.Helper()
	return startOn(t, dbURL, poolURL, listenURL, name, opts, nil)
}
