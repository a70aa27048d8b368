package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/store"
	"github.com/pushproxy/pushproxy/wakeup"
	"github.com/pushproxy/pushproxy/wakeup/fakeapns"
)

// timedSender records when each push leaves, by device token, then sends it.
type timedSender struct {
	next wakeup.Sender
	mu   sync.Mutex
	sent map[string]time.Time
}

func (s *timedSender) Send(ctx context.Context, p wakeup.Push) (string, error) {
	s.mu.Lock()
	s.sent[p.Token] = time.Now()
	s.mu.Unlock()
	return s.next.Send(ctx, p)
}

func (s *timedSender) take(token string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.sent[token]
	delete(s.sent, token)
	return t, ok
}

// runWakeLatency measures the time from the commit of an event for a sleeping device to its
// wake-up push leaving the proxy (the APNs sender's Send), with the debounce at 0, through the
// real scheduler, store and APNs sender, to the fake APNs.
func runWakeLatency(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wakelatency", flag.ExitOnError)
	devices := fs.Int("devices", 1000, "sleeping devices")
	perCommit := fs.Int("per-commit", 10, "devices that get an event in each commit")
	interval := fs.Duration("interval", 10*time.Millisecond, "time between commits")
	duration := fs.Duration("duration", 20*time.Second, "measured time")
	dbURL := fs.String("database-url", "", "Postgres to use (empty: a private durable cluster)")
	fs.Parse(args)

	env, cleanup, err := newWakeEnv(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer cleanup()
	st, apns, fake := env.st, env.apns, env.fake
	const owner = "bench"
	type dev struct {
		stream, device, token string
		epoch, head           int64
	}
	devs := make([]*dev, *devices)
	for i := range devs {
		tok := fmt.Sprintf("%064x", i+1)
		s, epoch, err := st.CreateStream(ctx, store.NewStream{URL: "http://origin.invalid/", TokenHash: []byte("x"),
			Push:       &pushproxy.PushAddress{Platform: pushproxy.PlatformAPNs, Token: tok, Environment: "production"},
			LeaseOwner: owner})
		if err != nil {
			return err
		}
		devs[i] = &dev{stream: s.ID, device: s.DeviceID, token: tok, epoch: epoch}
	}
	sender := &timedSender{next: apns, sent: map[string]time.Time{}}
	sched := wakeup.New(st, map[string]wakeup.Sender{pushproxy.PlatformAPNs: sender}, &wakeup.Options{
		InstanceID: owner, BudgetAPNs: 1 << 30, Jitter: 1, PollInterval: time.Second,
	})
	sched.Start(ctx)
	defer sched.Stop()
	policy := &store.WakePolicy{} // debounce 0, no jitter, no wait for a read

	var lat []time.Duration
	missed := 0
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	fmt.Printf("wakelatency: %d sleeping devices, %d woken per commit every %s, debounce 0\n", *devices, *perCommit, *interval)
	type inflight struct {
		d  *dev
		at time.Time
	}
	var waiting []inflight
	for end := time.Now().Add(*duration); time.Now().Before(end); {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		// Collect the pushes of earlier commits, and let those devices read.
		rest := waiting[:0]
		for _, w := range waiting {
			if t, ok := sender.take(w.d.token); ok {
				lat = append(lat, t.Sub(w.at))
				if _, err := st.Resume(ctx, w.d.stream, fmt.Sprint(w.d.head), true); err != nil {
					return err
				}
				if err := st.MarkRead(ctx, w.d.device, policy); err != nil {
					return err
				}
			} else if time.Since(w.at) > 5*time.Second {
				missed++
			} else {
				rest = append(rest, w)
			}
		}
		waiting = rest
		busy := map[*dev]bool{}
		for _, w := range waiting {
			busy[w.d] = true
		}
		var batch []store.Append
		var picked []*dev
		for len(picked) < *perCommit {
			d := devs[rand.N(len(devs))]
			if busy[d] {
				continue
			}
			busy[d] = true
			d.head++
			picked = append(picked, d)
			batch = append(batch, store.Append{StreamID: d.stream, Epoch: d.epoch, RetryMS: -1, HeadSeq: d.head, ResumeID: fmt.Sprint(d.head),
				Events: []pushproxy.Event{{Seq: d.head, LastEventID: fmt.Sprint(d.head), Type: "update", Data: `{"price":1}`}}})
		}
		if _, err := st.Commit(ctx, owner, batch, store.CommitOptions{Wake: policy}); err != nil {
			return err
		}
		at := time.Now()
		sched.Kick() // as the proxy's committer does after a commit that queued wake-ups
		for _, d := range picked {
			waiting = append(waiting, inflight{d, at})
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) == 0 {
		return fmt.Errorf("no wake-up was sent")
	}
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	fmt.Printf("result: %d wake-ups, commit to push leaving: p50 %s p90 %s p99 %s max %s; %d not sent within 5s; fake APNs received %d\n",
		len(lat), pct(0.5).Round(10*time.Microsecond), pct(0.9).Round(10*time.Microsecond), pct(0.99).Round(10*time.Microsecond),
		lat[len(lat)-1].Round(10*time.Microsecond), missed, len(fake.Pushes()))
	return nil
}

// wakeEnv is a store on a durable Postgres and an APNs sender pointed at a fake APNs.
type wakeEnv struct {
	st   *store.Store
	apns *wakeup.APNs
	fake *fakeapns.Server
}

func newWakeEnv(ctx context.Context, dbURL string) (env *wakeEnv, cleanup func(), err error) {
	var undo []func()
	cleanup = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	dbURLFlag := &dbURL
	dir, err := os.MkdirTemp("", "pushproxy-bench-wake-")
	if err != nil {
		return nil, nil, err
	}
	undo = append(undo, func() { os.RemoveAll(dir) })
	fake, err := startFakeAPNs(dir)
	if err != nil {
		return nil, nil, err
	}
	undo = append(undo, fake.Close)
	// The APNs sender trusts the system roots; point them at the fake's CA before anything
	// loads them.
	os.Setenv("SSL_CERT_FILE", fake.caFile)
	if _, err := x509.SystemCertPool(); err != nil {
		return nil, nil, err
	}
	apns, err := wakeup.NewAPNs(wakeup.APNsOptions{KeyFile: fake.keyFile, KeyID: fakeAPNsKeyID, TeamID: fakeAPNsTeamID, Topic: fakeAPNsTopic, URL: fake.URL()})
	if err != nil {
		return nil, nil, err
	}
	undo = append(undo, apns.Close)

	url, stopPG, err := startPostgres(ctx, *dbURLFlag)
	if err != nil {
		return nil, nil, err
	}
	undo = append(undo, stopPG)
	if err := store.Migrate(ctx, url, nil); err != nil {
		return nil, nil, err
	}
	st, err := store.Open(ctx, url, nil)
	if err != nil {
		return nil, nil, err
	}
	undo = append(undo, st.Close)

	return &wakeEnv{st: st, apns: apns, fake: fake.Server}, cleanup, nil
}

// fakeAPNs is a fake APNs on loopback, with what a sender needs to reach it: its CA's
// certificate to trust (SSL_CERT_FILE) and a token-auth signing key it accepts.
type fakeAPNs struct {
	*fakeapns.Server
	caFile, keyFile string
}

const fakeAPNsKeyID, fakeAPNsTeamID, fakeAPNsTopic = "KEY1234567", "TEAM123456", "com.example.bench"

// startFakeAPNs starts a fake APNs, writing its CA certificate and the key into dir.
func startFakeAPNs(dir string) (*fakeAPNs, error) {
	ca, err := fakeapns.NewCA()
	if err != nil {
		return nil, err
	}
	f := &fakeAPNs{caFile: filepath.Join(dir, "apns-ca.pem"), keyFile: filepath.Join(dir, "apns-key.p8")}
	if err := ca.WriteCertFile(f.caFile); err != nil {
		return nil, err
	}
	pub, err := fakeapns.GenerateAuthKey(f.keyFile)
	if err != nil {
		return nil, err
	}
	f.Server = fakeapns.New(fakeapns.Options{CA: ca, Keys: map[string]*ecdsa.PublicKey{fakeAPNsKeyID: pub}, TeamID: fakeAPNsTeamID})
	if err := f.Start(); err != nil {
		return nil, err
	}
	return f, nil
}

// serveFlags are the flags of `pushproxy serve` that send APNs pushes to the fake (the
// proxy also needs SSL_CERT_FILE=caFile).
func (f *fakeAPNs) serveFlags() []string {
	return []string{"--apns-key-file", f.keyFile, "--apns-key-id", fakeAPNsKeyID, "--apns-team-id", fakeAPNsTeamID,
		"--apns-topic", fakeAPNsTopic, "--apns-url", f.URL()}
}

// runWakeBurst measures dispatch throughput: devices each have a wake-up due at once in the
// outbox; one scheduler sends them all through the APNs sender to the fake APNs (which
// advertises and enforces a limit of concurrent streams, like APNs).
func runWakeBurst(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wakeburst", flag.ExitOnError)
	devices := fs.Int("devices", 20000, "devices with a wake-up due")
	inFlight := fs.Int("max-in-flight", 1000, "the scheduler's --wake-max-in-flight")
	batch := fs.Int("claim-batch", 1000, "the scheduler's --wake-claim-batch")
	dbURL := fs.String("database-url", "", "Postgres to use (empty: a private durable cluster)")
	fs.Parse(args)
	env, cleanup, err := newWakeEnv(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer cleanup()
	const owner = "bench"
	policy := &store.WakePolicy{}
	var batchAppends []store.Append
	flush := func() error {
		if len(batchAppends) == 0 {
			return nil
		}
		_, err := env.st.Commit(ctx, owner, batchAppends, store.CommitOptions{Wake: policy})
		batchAppends = batchAppends[:0]
		return err
	}
	for i := 0; i < *devices; i++ {
		s, epoch, err := env.st.CreateStream(ctx, store.NewStream{URL: "http://origin.invalid/", TokenHash: []byte("x"),
			Push:       &pushproxy.PushAddress{Platform: pushproxy.PlatformAPNs, Token: fmt.Sprintf("%064x", i+1), Environment: "production"},
			LeaseOwner: owner})
		if err != nil {
			return err
		}
		batchAppends = append(batchAppends, store.Append{StreamID: s.ID, Epoch: epoch, RetryMS: -1, HeadSeq: 1, ResumeID: "1",
			Events: []pushproxy.Event{{Seq: 1, LastEventID: "1", Data: "x"}}})
		if len(batchAppends) == 1000 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	sched := wakeup.New(env.st, map[string]wakeup.Sender{pushproxy.PlatformAPNs: env.apns}, &wakeup.Options{
		InstanceID: owner, BudgetAPNs: 1 << 30, Jitter: 1, MaxInFlight: *inFlight, ClaimBatch: *batch,
	})
	t0 := time.Now()
	sched.Start(ctx)
	defer sched.Stop()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if _, err := env.fake.WaitFor(wctx, *devices); err != nil {
		return err
	}
	el := time.Since(t0)
	fmt.Printf("result: %d wake-ups dispatched from the outbox to the fake APNs in %s: %.0f pushes/s; fake APNs stream limit %d, peak in flight %d, refused streams %d\n",
		*devices, el.Round(time.Millisecond), float64(*devices)/el.Seconds(), env.fake.MaxConcurrentStreams(), env.fake.PeakInFlight(), env.fake.RefusedStreams())
	return nil
}
