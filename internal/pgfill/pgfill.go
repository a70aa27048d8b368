// Package pgfill fills a migrated pushproxy database with many rows of realistic shape, by
// COPY, for query-plan tests and benchmarks at size (100,000 streams, a million events).
package pgfill

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Sizes say how much to write.
type Sizes struct {
	// Streams are spread over Streams/StreamsPerDevice devices; one in Ended is closed or
	// failed (ended long ago); every held stream has EventsPerStream queued events.
	Streams          int
	StreamsPerDevice int
	Ended            int // one stream in this many has ended (0: none)
	EventsPerStream  int
	// Wakeups finished (history), one per device per WakeupsPerDevice.
	WakeupsPerDevice int
	// PendingEvery: one device in this many has a wake-up pending, due within the hour (a
	// push it did not answer, waiting for the rewake delay); 0: none.
	PendingEvery int
	// ReadersEvery: one held stream in this many has an open reader (0: none), on the
	// instance that holds it.
	ReadersEvery int
}

// Fill writes the rows and analyzes the tables, so the planner sees their size.
func Fill(ctx context.Context, pool *pgxpool.Pool, sz Sizes) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = 0`); err != nil {
		return err
	}
	spd := max(1, sz.StreamsPerDevice)
	nDev := (sz.Streams + spd - 1) / spd
	devs := make([][16]byte, nDev)
	now := time.Now()
	var rows [][]any
	for i := range devs {
		devs[i] = uuid()
		var dead any
		if i%50 == 0 {
			dead = now.Add(-time.Duration(i%96) * time.Hour)
		}
		rows = append(rows, []any{devs[i], "fcm", fmt.Sprintf("token-%d", i), now.Add(-30 * 24 * time.Hour), now.Add(-time.Duration(i%200) * time.Hour), dead})
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"devices"}, []string{"id", "platform", "token", "created_at", "updated_at", "dead_at"}, pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("copy devices: %w", err)
	}
	rows = rows[:0]
	var evRows [][]any
	for i := range sz.Streams {
		id := uuid()
		state, closed := "held", any(nil)
		head := int64(sz.EventsPerStream)
		if sz.Ended > 0 && i%sz.Ended == 0 {
			state, closed, head = "closed", now.Add(-time.Duration(i%400)*time.Hour), 0
		}
		created := now.Add(-time.Duration(i%500) * time.Hour)
		read := now.Add(-time.Duration(i%300) * time.Hour)
		rows = append(rows, []any{id, devs[i/spd], "https://origin.example/events/" + fmt.Sprint(i), []byte("hash"), state,
			head, int64(0), head * 40, "instance-" + fmt.Sprint(i%4), created, read, closed})
		for seq := int64(1); seq <= head; seq++ {
			evRows = append(evRows, []any{id, seq, []byte(fmt.Sprint(seq)), []byte("tick"),
				[]byte(`{"sym":"ACME","price":12.34}`), created.Add(time.Duration(seq) * time.Minute)})
		}
		if len(evRows) >= 100000 {
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"events"}, []string{"stream_id", "seq", "last_event_id", "type", "data", "created_at"}, pgx.CopyFromRows(evRows)); err != nil {
				return fmt.Errorf("copy events: %w", err)
			}
			evRows = evRows[:0]
		}
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"events"}, []string{"stream_id", "seq", "last_event_id", "type", "data", "created_at"}, pgx.CopyFromRows(evRows)); err != nil {
		return fmt.Errorf("copy events: %w", err)
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"streams"}, []string{"id", "device_id", "url", "token_hash", "state",
		"head_seq", "floor_seq", "backlog_bytes", "lease_owner", "created_at", "read_at", "closed_at"}, pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("copy streams: %w", err)
	}
	if n := sz.ReadersEvery; n > 0 {
		var readers [][]any
		for i, r := range rows {
			if r[4] == "held" && i%n == 1 {
				readers = append(readers, []any{uuid(), r[0], r[1], r[8], now.Add(time.Minute)})
			}
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"readers"}, []string{"id", "stream_id", "device_id", "instance_id", "expires_at"}, pgx.CopyFromRows(readers)); err != nil {
			return fmt.Errorf("copy readers: %w", err)
		}
	}
	rows = rows[:0]
	if w := sz.WakeupsPerDevice; w > 0 {
		for i, d := range devs {
			for j := range w {
				at := now.Add(-time.Duration((i+j)%300) * time.Hour)
				rows = append(rows, []any{uuid(), d, "sent", at, at, at, at, "sent"})
			}
		}
	}
	if n := sz.PendingEvery; n > 0 {
		for i, d := range devs {
			if i%n == 1 {
				at := now.Add(time.Duration(i%60) * time.Minute)
				rows = append(rows, []any{uuid(), d, "pending", now, at, nil, nil, ""})
			}
		}
	}
	if len(rows) > 0 {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"wakeups"}, []string{"id", "device_id", "state", "created_at", "due_at", "sent_at", "finished_at", "outcome"}, pgx.CopyFromRows(rows)); err != nil {
			return fmt.Errorf("copy wakeups: %w", err)
		}
	}
	for i := range 4 {
		if _, err := tx.Exec(ctx, `INSERT INTO instances (id, expires_at) VALUES ($1, now() + interval '1 hour')`, fmt.Sprint("instance-", i)); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	_, err = conn.Exec(ctx, `SET statement_timeout = 0; ANALYZE; RESET statement_timeout`)
	return err
}

func uuid() [16]byte {
	var u [16]byte
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u
}
