package store_test

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/store"
)

// pgDumpBin is the server's own pg_dump (the shared server and pglocal's are PostgreSQL 15).
const pgDumpBin = "/usr/lib/postgresql/15/bin/pg_dump"

// TestCredentialsAreErasedTheMomentAStreamEnds: every way a stream ends (the device takes
// it back, the origin ends it, it fails, its device's token died, its device is forgotten,
// nobody read it) erases its forwarded headers and its URL's userinfo and query at once; a
// pg_dump --data-only of the database then holds none of them, while it does hold those of
// a stream still held (the dump would show them).
func TestCredentialsAreErasedTheMomentAStreamEnds(t *testing.T) {
	t.Parallel()
	st, b := setup(t)
	ctx := context.Background()
	var secrets []string
	mk := func(name string, push *pushproxy.PushAddress) (pushproxy.Stream, int64, string) {
		t.Helper()
		secret := "s3cret-" + name
		s, epoch, err := st.CreateStream(ctx, store.NewStream{
			URL:       "https://user-" + secret + ":pw@origin.test/events?token=q-" + secret + "#frag-" + secret,
			Headers:   map[string]string{"Authorization": "Bearer h-" + secret, "X-Other": "x-" + secret},
			TokenHash: []byte("hash"), Push: push, LeaseOwner: owner,
		})
		if err != nil {
			t.Fatal(err)
		}
		commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, Events: events(1, 2, seqID), HeadSeq: 2, ResumeID: "e2"})
		return s, epoch, secret
	}
	dev := func(token string) *pushproxy.PushAddress {
		return &pushproxy.PushAddress{Platform: pushproxy.PlatformFCM, Token: token}
	}
	var ended []string

	s, _, sec := mk("device-close", nil)
	if _, err := st.CloseStream(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	ended, secrets = append(ended, s.ID), append(secrets, sec)

	for _, state := range []string{pushproxy.StateClosed, pushproxy.StateFailed} {
		s, epoch, sec := mk("origin-"+state, nil)
		commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, HeadSeq: 2, ResumeID: "e2", RetryMS: -1, State: state, StateReason: "origin said so"})
		ended, secrets = append(ended, s.ID), append(secrets, sec)
	}

	s, _, sec = mk("dead-device", dev("dead-token"))
	if _, err := st.Pool().Exec(ctx, `UPDATE devices SET dead_at = now() - interval '2 days', dead_reason = 'Unregistered' WHERE token = 'dead-token'`); err != nil {
		t.Fatal(err)
	}
	if n, err := st.FailDeadDevices(ctx, store.Fence{}, time.Now(), 24*time.Hour, 10); err != nil || n != 1 {
		t.Fatalf("failed %d streams of the dead device: %v", n, err)
	}
	ended, secrets = append(ended, s.ID), append(secrets, sec)

	s, _, sec = mk("forgotten-device", dev("forgotten-token"))
	if _, err := st.Pool().Exec(ctx, `UPDATE devices SET dead_at = now(), dead_reason = 'Unregistered' WHERE token = 'forgotten-token'`); err != nil {
		t.Fatal(err)
	}
	if err := st.ForgetDevice(ctx, s.DeviceID); err != nil {
		t.Fatal(err)
	}
	ended, secrets = append(ended, s.ID), append(secrets, sec)

	s, _, sec = mk("idle", nil)
	if _, err := st.Pool().Exec(ctx, `UPDATE streams SET read_at = now() - interval '8 days' WHERE id = $1`, s.ID); err != nil {
		t.Fatal(err)
	}
	if n, err := st.CloseIdleStreams(ctx, store.Fence{}, 7*24*time.Hour, 10); err != nil || n != 1 {
		t.Fatalf("closed %d idle streams: %v", n, err)
	}
	ended, secrets = append(ended, s.ID), append(secrets, sec)

	held, _, heldSecret := mk("still-held", nil)

	for _, id := range ended {
		got, err := st.GetStream(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got.State == pushproxy.StateHeld || len(got.Headers) != 0 || got.URL != "https://origin.test/events" {
			t.Errorf("ended stream %s (%s): headers %v, url %q", id, got.StateReason, got.Headers, got.URL)
		}
	}
	if got, _ := st.GetStream(ctx, held.ID); len(got.Headers) != 2 || !strings.Contains(got.URL, "q-"+heldSecret) {
		t.Errorf("held stream lost its credentials: %v %q", got.Headers, got.URL)
	}

	out, err := exec.CommandContext(ctx, pgDumpBin, "--data-only", "--dbname", b.url).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, out)
	}
	dump := string(out)
	if !strings.Contains(dump, "h-"+heldSecret) || !strings.Contains(dump, "q-"+heldSecret) {
		t.Fatalf("the dump does not hold the held stream's header and query: it could not show an ended one's either")
	}
	for _, sec := range secrets {
		if strings.Contains(dump, sec) {
			t.Errorf("pg_dump --data-only holds %q of a stream that ended", sec)
		}
	}
}

// TestBacklogIsTrimmedAtMaxBytes: past the byte bound the oldest events go, exactly as many
// as needed, and the next reader gets the gap signal.
func TestBacklogIsTrimmedAtMaxBytesInCommits(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	s, epoch := newStream(t, st, nil)
	ev := func(seq int64) pushproxy.Event {
		return pushproxy.Event{Seq: seq, LastEventID: fmt.Sprintf("%03d", seq), Type: "t", Data: strings.Repeat("x", 96)}
	}
	// Every event is 3 + 1 + 96 = 100 bytes; the bound is 1,000 bytes: 10 events.
	opts := store.CommitOptions{MaxBacklogBytes: 1000}
	var evs []pushproxy.Event
	for i := int64(1); i <= 10; i++ {
		evs = append(evs, ev(i))
	}
	if _, err := st.Commit(ctx, owner, []store.Append{{StreamID: s.ID, Epoch: epoch, Events: evs, HeadSeq: 10, ResumeID: "010", RetryMS: -1}}, opts); err != nil {
		t.Fatal(err)
	}
	got, _ := st.GetStream(ctx, s.ID)
	if got.FloorSeq != 0 || got.HeadSeq != 10 {
		t.Fatalf("at the bound exactly: floor %d head %d, want nothing trimmed", got.FloorSeq, got.HeadSeq)
	}
	cur, err := st.Resume(ctx, s.ID, "", false)
	if err != nil || cur.Gap {
		t.Fatalf("resume at the bound: %+v %v", cur, err)
	}
	// Three more: 1,300 bytes, so the three oldest go.
	if _, err := st.Commit(ctx, owner, []store.Append{{StreamID: s.ID, Epoch: epoch, Events: []pushproxy.Event{ev(11), ev(12), ev(13)}, HeadSeq: 13, ResumeID: "013", RetryMS: -1}}, opts); err != nil {
		t.Fatal(err)
	}
	got, _ = st.GetStream(ctx, s.ID)
	evsLeft, _ := st.EventsAfter(ctx, s.ID, 0, 100)
	var bytes int64
	if err := st.Pool().QueryRow(ctx, `SELECT backlog_bytes FROM streams WHERE id = $1`, s.ID).Scan(&bytes); err != nil {
		t.Fatal(err)
	}
	if got.FloorSeq != 3 || len(evsLeft) != 10 || evsLeft[0].Seq != 4 || bytes != 1000 {
		t.Fatalf("floor %d, %d events left (first %v), %d bytes; want floor 3, events 4..13, 1000 bytes", got.FloorSeq, len(evsLeft), evsLeft[0].Seq, bytes)
	}
	cur, err = st.Resume(ctx, s.ID, "", false)
	if err != nil || !cur.Gap || cur.After != 3 {
		t.Fatalf("resume after the trim: %+v %v, want a gap after 3", cur, err)
	}
}

// TestMaintenanceLeaseIsExclusiveAndFenced: one leader at a time; a renewal keeps the epoch;
// a lapsed lease is taken with a new epoch, and the statements of the old one change nothing.
func TestMaintenanceLeaseIsExclusiveAndFenced(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	fa, ok, err := st.TakeLeadership(ctx, "a", time.Minute)
	if err != nil || !ok || fa.Epoch != 1 {
		t.Fatalf("a takes: %+v %v %v", fa, ok, err)
	}
	if _, ok, err := st.TakeLeadership(ctx, "b", time.Minute); err != nil || ok {
		t.Fatalf("b took a fresh lease: %v %v", ok, err)
	}
	if f, ok, _ := st.TakeLeadership(ctx, "a", time.Minute); !ok || f != fa {
		t.Fatalf("a renews: %+v %v, want %+v", f, ok, fa)
	}
	// The lease lapses (a froze): b takes it with a new epoch.
	if _, err := st.Pool().Exec(ctx, `UPDATE maintenance_leader SET expires_at = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	fb, ok, err := st.TakeLeadership(ctx, "b", time.Minute)
	if err != nil || !ok || fb.Epoch != 2 {
		t.Fatalf("b takes the lapsed lease: %+v %v %v", fb, ok, err)
	}
	if id, _ := st.MaintenanceLeader(ctx); id != "b" {
		t.Fatalf("leader %q", id)
	}
	// a wakes and runs a rule under its old fence: nothing happens.
	if _, err := st.Pool().Exec(ctx, `INSERT INTO devices (platform, token) VALUES ('fcm', 'x')`); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Pool().Exec(ctx, `INSERT INTO wakeups (device_id, state, created_at, due_at, finished_at)
		SELECT id, 'sent', now(), now(), now() - interval '30 days' FROM devices`); err != nil {
		t.Fatal(err)
	}
	if n, err := st.TrimWakeups(ctx, fa, time.Now(), 10); err != nil || n != 0 {
		t.Fatalf("the old leader trimmed %d wake-ups: %v", n, err)
	}
	if err := st.RefreshGauges(ctx, fa); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := st.GetGauges(ctx); ok {
		t.Fatal("the old leader wrote the gauges")
	}
	if n, err := st.TrimWakeups(ctx, fb, time.Now(), 10); err != nil || n != 1 {
		t.Fatalf("the leader trimmed %d wake-ups: %v", n, err)
	}
	// Resigning hands over at once.
	if err := st.ResignLeadership(ctx, fb); err != nil {
		t.Fatal(err)
	}
	if f, ok, _ := st.TakeLeadership(ctx, "a", time.Minute); !ok || f.Epoch != 3 {
		t.Fatalf("a after b resigned: %+v %v", f, ok)
	}
}
