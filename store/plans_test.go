package store_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy/store"
)

// TestServingPlansUseIndexes: at 100,000 streams and 1,000,000 queued events (statistics
// fresh, as autovacuum keeps them), the statements of a page read and of an acknowledgement,
// the batched page read and the reclaimer's delete plan no sequential scan of events or
// streams.
func TestServingPlansUseIndexes(t *testing.T) {
	if testing.Short() {
		t.Skip("fills 1,000,000 events")
	}
	t.Parallel()
	st, b := setup(t)
	ctx := context.Background()
	pool := st.Pool()
	// The fill runs on a session of its own, without the store's statement timeout.
	fill, err := pgx.Connect(ctx, b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer fill.Close(ctx)
	const streams, perStream = 100000, 10
	_, err = fill.Exec(ctx, `
		INSERT INTO streams (id, url, token_hash, head_seq, floor_seq, acked_seq)
		SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(g), 12, '0'))::uuid, 'http://origin.test/s', '\x00', $1, 2, 2
		FROM generate_series(1, $2::int) g`, perStream, streams)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fill.Exec(ctx, `
		INSERT INTO events (stream_id, seq, last_event_id, type, data)
		SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(g), 12, '0'))::uuid, s, s::text::bytea, 'tick', '{"sym":"X","price":1}'
		FROM generate_series(1, $2::int) g, generate_series(1, $1::int) s`, perStream, streams)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fill.Exec(ctx, `ANALYZE streams; ANALYZE events`); err != nil {
		t.Fatal(err)
	}
	id := "00000000-0000-0000-0000-000000001234"
	other := "00000000-0000-0000-0000-000000004321"
	for _, c := range []struct {
		name string
		sql  string
		args []any
	}{
		{"page read", store.PageSQL, []any{id, int64(3), 1001}},
		{"batched page read", store.PagesSQL, []any{[]string{id, other}, []int64{3, 0}, []int32{500, 500}}},
		{"Last-Event-ID lookup", store.LookupSQL, []any{id, int64(2), []byte("7")}},
		{"acknowledged size", store.AckSizeSQL, []any{id, int64(2), int64(7)}},
		{"acknowledgement", store.AckSQL, []any{id, int64(2), int64(7), []byte("7"), int64(100)}},
		{"reclaim batch", store.ReclaimSQL, []any{id, int64(7), 1000}},
	} {
		rows, err := pool.Query(ctx, "EXPLAIN "+c.sql, c.args...)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var plan []string
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, line)
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		text := strings.Join(plan, "\n")
		if strings.Contains(text, "Seq Scan on events") || strings.Contains(text, "Seq Scan on streams") {
			t.Errorf("%s scans a table:\n%s", c.name, text)
		}
		t.Logf("%s:\n%s", c.name, text)
	}
}
