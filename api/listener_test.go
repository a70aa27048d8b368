package api_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy/internal/proxytest"
	"github.com/pushproxy/pushproxy/proxy"
)

// openReaders hands off n streams from one origin each and opens an SSE reader on each,
// waiting until every reader is registered.
func openReaders(t *testing.T, b *testBundle, n int) ([]*proxytest.ScriptOrigin, []*sseReader) {
	t.Helper()
	var (
		origins []*proxytest.ScriptOrigin
		readers []*sseReader
	)
	for i := range n {
		o := newScriptOrigin(t, 0)
		h := handoff(t, b, map[string]any{"url": o.Srv.URL, "push": map[string]string{"platform": "fcm", "token": proxytest.FCMToken("device-" + strconv.Itoa(i))}})
		origins, readers = append(origins, o), append(readers, openSSE(t, b, h, nil))
	}
	conn := dbConn(t, b)
	eventually(t, 20*time.Second, "readers registered", func() bool {
		var k int
		return conn.QueryRow(context.Background(), `SELECT count(*) FROM readers`).Scan(&k) == nil && k == n
	})
	return origins, readers
}

func dbConn(t *testing.T, b *testBundle) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), b.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestReadersSurviveListenerTermination: the instance's listener connection is killed with
// pg_terminate_backend, again and again, while readers wait: they get every event.
func TestReadersSurviveListenerTermination(t *testing.T) {
	t.Parallel()
	_, b := proxytest.Start(t, &proxy.Options{ReaderPoll: time.Hour}, nil) // no poll: the reconnect alone
	origins, readers := openReaders(t, b, 3)
	conn := dbConn(t, b)
	for round := 1; round <= 4; round++ {
		var killed int
		err := conn.QueryRow(context.Background(), `
			SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND query LIKE 'LISTEN %') k`).Scan(&killed)
		if err != nil || killed != 1 {
			// The previous round's listener may still be reconnecting: wait for it.
			eventually(t, 20*time.Second, "listener back", func() bool {
				err = conn.QueryRow(context.Background(), `
					SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
					WHERE datname = current_database() AND query LIKE 'LISTEN %') k`).Scan(&killed)
				return err == nil && killed == 1
			})
		}
		for _, o := range origins {
			o.PublishN(1)
		}
		for i, r := range readers {
			if ev := r.next(t); ev.LastEventID != strconv.Itoa(round) {
				t.Fatalf("round %d, reader %d: event %+v", round, i, ev)
			}
		}
	}
}

// TestReadersCatchMissedNotificationsByPoll: notifications that never arrive (here: sent
// to a channel nobody listens on) delay readers by at most the slow poll.
func TestReadersCatchMissedNotificationsByPoll(t *testing.T) {
	t.Parallel()
	_, b := proxytest.Start(t, &proxy.Options{ReaderPoll: 200 * time.Millisecond}, nil)
	origins, readers := openReaders(t, b, 3)
	conn := dbConn(t, b)
	if _, err := conn.Exec(context.Background(), `UPDATE readers SET channel = 'pushproxy_nobody'`); err != nil {
		t.Fatal(err)
	}
	for round := 1; round <= 3; round++ {
		for _, o := range origins {
			o.PublishN(1)
		}
		for i, r := range readers {
			if ev := r.next(t); ev.LastEventID != strconv.Itoa(round) {
				t.Fatalf("round %d, reader %d: event %+v", round, i, ev)
			}
		}
	}
}
