package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy/internal/startstop"
)

// Listener holds one connection that LISTENs on a channel and hands every notification's
// payload to a callback. It reconnects with backoff when the connection breaks; since
// notifications sent meanwhile are lost, it then calls the resync callback so subscribers
// can re-read what they watch.
//
// Its session runs LISTEN and then only waits: it never opens a transaction nor takes a lock
// another session could wait for, so the store's session timeouts (Options) do not concern
// it. Its connect errors are classified like the store's (pushproxy.EUNAVAILABLE).
type Listener struct {
	url      string
	channel  string
	also     []string // more channels, LISTENed on the same connection
	instance string   // names the session (SessionOf)
	log      *slog.Logger
	onNote   func(payload string)
	resync   func()
	loop     startstop.Loop
}

// NewListener returns a Listener for channel on the database at url. onNote is called for
// each notification, resync after every reconnect; both are called from one goroutine and
// must not block for long.
func NewListener(url, channel string, log *slog.Logger, onNote func(string), resync func()) *Listener {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Listener{url: url, channel: channel, log: log, onNote: onNote, resync: resync}
}

// Start connects once with ctx, so that a bad configuration fails at start-up, then listens
// in the background until Stop. Starting a running Listener changes nothing (the new
// connection is closed at once).
func (l *Listener) Start(ctx context.Context) error {
	conn, err := l.connect(ctx)
	if err != nil {
		return err
	}
	if !l.loop.Start(context.WithoutCancel(ctx), func(ctx context.Context) { l.run(ctx, conn) }) {
		conn.Close(ctx) // already running
	}
	return nil
}

// SessionOf names the Listener's session after the instance id (SessionName), as
// Options.InstanceID names the pool's, unless its URL or PGAPPNAME names it (call it
// before Start): a session that delivers notifications its frozen instance does not read
// stays in a transaction, and the maintenance leader ends it (EndStuckSessions).
func (l *Listener) SessionOf(instanceID string) { l.instance = instanceID }

// Also makes the Listener listen on channel too (call it before Start).
func (l *Listener) Also(channel string) { l.also = append(l.also, channel) }

// Stop stops listening and returns once the connection is closed. It is idempotent.
func (l *Listener) Stop() { l.loop.Stop() }

// Stopped returns a channel closed once the Listener has stopped (see startstop.Loop).
func (l *Listener) Stopped() <-chan struct{} { return l.loop.Stopped() }

func (l *Listener) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(l.url)
	if err != nil {
		return nil, fmt.Errorf("listen: connect: %w", redactURLError(err))
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok && l.instance != "" {
		cfg.RuntimeParams["application_name"] = SessionName(l.instance)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("listen: connect: %w", classify(redactURLError(err)))
	}
	for _, ch := range append([]string{l.channel}, l.also...) {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			conn.Close(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("listen: %w", classify(err))
		}
	}
	return conn, nil
}

func (l *Listener) run(ctx context.Context, conn *pgx.Conn) {
	backoff := 100 * time.Millisecond
	for {
		for {
			n, err := conn.WaitForNotification(ctx)
			if err != nil {
				conn.Close(context.WithoutCancel(ctx))
				if ctx.Err() != nil {
					return
				}
				l.log.WarnContext(ctx, "notification listener lost its connection", slog.String("error", err.Error()))
				break
			}
			backoff = 100 * time.Millisecond
			l.onNote(n.Payload)
		}
		for {
			wait := backoff/2 + rand.N(backoff/2+1)
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, 2*time.Second) // readers are woken within 2 s of the database's return
			var err error
			conn, err = l.connect(ctx)
			if err == nil {
				break
			}
			if errors.Is(err, context.Canceled) {
				return
			}
			l.log.WarnContext(ctx, "notification listener cannot reconnect", slog.String("error", err.Error()))
		}
		l.resync()
	}
}
