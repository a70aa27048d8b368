package store_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/internal/seal"
	"github.com/pushproxy/pushproxy/migrations"
	"github.com/pushproxy/pushproxy/store"
)

// Secrets a handoff forwards: none of them may be found in the database's data.
var (
	sealedHeaders = map[string]string{
		"Authorization": "Bearer auth-secret-7f3a",
		"Cookie":        "session=cookie-secret-91bc",
		"X-Api-Key":     "apikey-secret-c0de",
	}
	sealedURL = "http://origin.test/events?key=query-secret-5e1f&room=42"
	// A stream written in clear, as before sealing existed.
	clearHeaders = map[string]string{"Authorization": "Bearer legacy-secret-aa11"}
	clearURL     = "http://origin.test/old?token=legacy-query-bb22"
)

var allSecrets = []string{"auth-secret-7f3a", "cookie-secret-91bc", "apikey-secret-c0de", "query-secret-5e1f",
	"legacy-secret-aa11", "legacy-query-bb22"}

// openStore opens another store on the database at url, with keys (nil: in clear).
func openStore(t *testing.T, url string, keys *seal.Keys) *store.Store {
	t.Helper()
	o := &store.Options{}
	if keys != nil {
		o.Sealer = keys
	}
	st, err := store.Open(context.Background(), url, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

func createUnheld(t *testing.T, st *store.Store, url string, headers map[string]string) pushproxy.Stream {
	t.Helper()
	s, _, err := st.CreateStream(context.Background(), store.NewStream{URL: url, Headers: headers, TokenHash: []byte("h")})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// pgDump returns the output of the real pg_dump --data-only of the database at url.
func pgDump(t *testing.T, url string) []byte {
	t.Helper()
	out := pgtest.DumpData(t, url)
	if !bytes.Contains(out, []byte("COPY public.streams")) {
		t.Fatalf("pg_dump wrote no streams:\n%s", out)
	}
	return out
}

func assertNoSecrets(t *testing.T, what string, b []byte, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if bytes.Contains(b, []byte(s)) {
			t.Errorf("%s holds %q", what, s)
		}
	}
}

// claimAll claims every stream o can, as a new instance would.
func claimAll(t *testing.T, st *store.Store, o string) map[string]store.Claim {
	t.Helper()
	ctx := context.Background()
	cs, err := st.ClaimStreams(ctx, o, time.Minute, 1000)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]store.Claim{}
	for _, c := range cs {
		out[c.Stream.ID] = c
	}
	return out
}

func sealedPrefixes(t *testing.T, st *store.Store) map[string][]byte {
	t.Helper()
	rows, err := st.Pool().Query(context.Background(), `SELECT id::text, credentials_sealed FROM streams`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for rows.Next() {
		var (
			id string
			b  []byte
		)
		if err := rows.Scan(&id, &b); err != nil {
			t.Fatal(err)
		}
		out[id] = b
	}
	return out
}

func TestCredentialsAreSealedAtRestAndRotate(t *testing.T) {
	ctx := context.Background()
	_, b := setup(t)
	k1, err := seal.Generate()
	if err != nil {
		t.Fatal(err)
	}
	legacy := createUnheld(t, openStore(t, b.url, nil), clearURL, clearHeaders)
	st1 := openStore(t, b.url, k1)
	var ids []string
	for range 3 {
		ids = append(ids, createUnheld(t, st1, sealedURL, sealedHeaders).ID)
	}
	bare := createUnheld(t, st1, "http://origin.test/plain", nil)

	dump := pgDump(t, b.url)
	assertNoSecrets(t, "pg_dump --data-only", dump, allSecrets[:4]...)
	if !bytes.Contains(dump, []byte("legacy-secret-aa11")) {
		t.Fatal("the stream written in clear is not in the dump: the dump proves nothing")
	}
	for _, id := range ids {
		got, err := st1.GetStream(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got.URL != "http://origin.test/events" || len(got.Headers) != 0 {
			t.Fatalf("GetStream shows %q %v: credentials outside the claim", got.URL, got.Headers)
		}
	}
	if p := sealedPrefixes(t, st1); p[bare.ID] != nil {
		t.Fatalf("a stream with nothing to seal has a sealed value %x", p[bare.ID])
	}

	// A plaintext instance, or one with other keys, claims none of the sealed streams.
	if got := claimAll(t, openStore(t, b.url, nil), "clear"); len(got) != 2 || got[legacy.ID].Stream.URL != clearURL {
		t.Fatalf("an instance without keys claimed %d streams", len(got))
	}
	other, _ := seal.Generate()
	rel := func(owner string) {
		t.Helper()
		if err := st1.ReleaseLeases(ctx, owner); err != nil {
			t.Fatal(err)
		}
	}
	rel("clear")
	otherStore := openStore(t, b.url, other)
	if got := claimAll(t, otherStore, "other"); len(got) != 2 {
		t.Fatalf("an instance with other keys claimed %d streams", len(got))
	}
	if u, err := otherStore.UnopenableHeld(ctx); err != nil || len(u) != 1 || u[0].Streams != 3 || !bytes.Equal(u[0].Prefix, k1.PrimaryPrefix()) {
		t.Fatalf("unopenable streams for another key file: %+v, %v", u, err)
	}
	if u, err := st1.UnopenableHeld(ctx); err != nil || len(u) != 0 {
		t.Fatalf("unopenable streams for the right key file: %+v, %v", u, err)
	}
	rel("other")

	// The claim opens them: the exact headers and query, the legacy ones too.
	got := claimAll(t, st1, "one")
	if len(got) != 5 {
		t.Fatalf("claimed %d of 5", len(got))
	}
	for _, id := range ids {
		c := got[id].Stream
		if c.URL != sealedURL || !mapsEqual(c.Headers, sealedHeaders) {
			t.Fatalf("claim opened %q %v", c.URL, c.Headers)
		}
	}
	if c := got[legacy.ID].Stream; c.URL != clearURL || !mapsEqual(c.Headers, clearHeaders) {
		t.Fatalf("legacy claim: %q %v", c.URL, c.Headers)
	}
	rel("one")

	// Rotation: a second key becomes primary; every row is re-sealed under it, the legacy
	// one sealed too, while a holder keeps committing.
	k2, err := k1.WithNewPrimary()
	if err != nil {
		t.Fatal(err)
	}
	st2 := openStore(t, b.url, k2)
	held := createUnheld(t, st2, sealedURL, sealedHeaders) // sealed under k2 already
	hc := claimAll(t, st2, owner)
	res, err := st2.Reseal(ctx, store.ResealOptions{Batch: 2})
	if err != nil {
		t.Fatal(err)
	}
	if res.Resealed != 3 || res.Sealed != 1 {
		t.Fatalf("reseal: %+v, want 3 re-sealed and 1 sealed", res)
	}
	want := seal.Prefix(k2.Primary())
	for id, v := range sealedPrefixes(t, st2) {
		if id == bare.ID {
			continue
		}
		if kid, _ := seal.KeyID(v); !bytes.HasPrefix(v, want) || kid != k2.Primary() {
			t.Errorf("stream %s sealed under %x after the rotation, want key id %d", id, v[:min(len(v), 5)], k2.Primary())
		}
	}
	assertNoSecrets(t, "pg_dump --data-only after rotation", pgDump(t, b.url), allSecrets...)
	// The holder's lease survived the rotation: it still commits.
	c := hc[held.ID]
	if r := commit(t, st2, store.Append{StreamID: held.ID, Epoch: c.Epoch, Events: events(1, 1, seqID), HeadSeq: 1, ResumeID: "e1"}); len(r.Lost) != 0 {
		t.Fatalf("a holder lost its stream to the rotation: %+v", r.Lost)
	}
	// A second rotation has nothing to do.
	if res, err := st2.Reseal(ctx, store.ResealOptions{}); err != nil || res != (store.ResealResult{}) {
		t.Fatalf("second reseal: %+v, %v", res, err)
	}

	// The old key removed: claims open every stream with the new key alone.
	k3, err := k2.PrimaryOnly()
	if err != nil {
		t.Fatal(err)
	}
	st3 := openStore(t, b.url, k3)
	if err := st2.ReleaseLeases(ctx, owner); err != nil {
		t.Fatal(err)
	}
	got = claimAll(t, st3, "three")
	if len(got) != 6 {
		t.Fatalf("claimed %d of 6 after the rotation", len(got))
	}
	for _, id := range append(ids, held.ID) {
		if c := got[id].Stream; c.URL != sealedURL || !mapsEqual(c.Headers, sealedHeaders) {
			t.Fatalf("claim after rotation opened %q %v", c.URL, c.Headers)
		}
	}
	if c := got[legacy.ID].Stream; c.URL != clearURL || !mapsEqual(c.Headers, clearHeaders) {
		t.Fatalf("legacy claim after rotation: %q %v", c.URL, c.Headers)
	}
	// The instance with only the old key now claims none of them.
	rel("three")
	if got := claimAll(t, openStore(t, b.url, k1), "old"); len(got) != 1 || got[bare.ID].Stream.ID == "" {
		t.Fatalf("an instance with the removed key claimed %d streams", len(got))
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// A sealed value that does not open (moved from another row, or damaged) fails its stream
// with a clear reason; nothing in clear is made up for it.
func TestUnopenableCredentialsFailTheStream(t *testing.T) {
	ctx := context.Background()
	_, b := setup(t)
	k, _ := seal.Generate()
	st := openStore(t, b.url, k)
	a := createUnheld(t, st, sealedURL, sealedHeaders)
	moved := createUnheld(t, st, "http://origin.test/b?x=1", nil)
	damaged := createUnheld(t, st, sealedURL, sealedHeaders)
	ok := createUnheld(t, st, sealedURL, sealedHeaders)
	if _, err := st.Pool().Exec(ctx, `UPDATE streams SET credentials_sealed = (SELECT credentials_sealed FROM streams WHERE id = $1) WHERE id = $2`, a.ID, moved.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Pool().Exec(ctx, `UPDATE streams SET credentials_sealed = overlay(credentials_sealed PLACING '\xff'::bytea FROM 20) WHERE id = $1`, damaged.ID); err != nil {
		t.Fatal(err)
	}
	// A rotation that meets one fails it too, and carries on.
	unclaimed := createUnheld(t, st, sealedURL, sealedHeaders)
	if _, err := st.Pool().Exec(ctx, `UPDATE streams SET credentials_sealed = (SELECT credentials_sealed FROM streams WHERE id = $1) WHERE id = $2`, ok.ID, unclaimed.ID); err != nil {
		t.Fatal(err)
	}
	k2, _ := k.WithNewPrimary()
	st2 := openStore(t, b.url, k2)
	if res, err := st2.Reseal(ctx, store.ResealOptions{}); err != nil || res.Failed != 3 || res.Resealed != 2 {
		t.Fatalf("reseal over unopenable values: %+v, %v", res, err)
	}
	got := claimAll(t, st2, "one")
	if len(got) != 2 || got[ok.ID].Stream.URL != sealedURL || got[a.ID].Stream.URL != sealedURL {
		t.Fatalf("claimed %v", got)
	}
	// A rotation with a key file that lacks the rows' key stops with a clear error and
	// changes nothing.
	other, _ := seal.Generate()
	if _, err := openStore(t, b.url, other).Reseal(ctx, store.ResealOptions{}); !errors.Is(err, seal.ErrUnknownKey) || !strings.Contains(err.Error(), "add that key") {
		t.Fatalf("reseal with another key file: %v", err)
	}
	if p := sealedPrefixes(t, st); !bytes.HasPrefix(p[ok.ID], k2.PrimaryPrefix()) {
		t.Fatalf("a failed rotation changed a row: %x", p[ok.ID][:5])
	}
	for _, id := range []string{moved.ID, damaged.ID, unclaimed.ID} {
		s, err := st.GetStream(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if s.State != pushproxy.StateFailed || !strings.Contains(s.StateReason, "do not decrypt") {
			t.Fatalf("stream with an unopenable value: %s %q", s.State, s.StateReason)
		}
	}
}

// A stream that ends loses its credentials at once, whatever ended it.
func TestEndedStreamsLoseTheirCredentials(t *testing.T) {
	ctx := context.Background()
	_, b := setup(t)
	k, _ := seal.Generate()
	st := openStore(t, b.url, k)
	s := createUnheld(t, st, sealedURL, sealedHeaders)
	legacy := createUnheld(t, openStore(t, b.url, nil), clearURL, clearHeaders)
	for _, id := range []string{s.ID, legacy.ID} {
		if _, err := st.CloseStream(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM streams WHERE credentials_sealed IS NOT NULL OR headers <> '{}' OR url LIKE '%?%'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d closed streams kept credentials", n)
	}
	assertNoSecrets(t, "pg_dump --data-only", pgDump(t, b.url), allSecrets...)
}

// TestResealWhileHoldersCommit: a rotation over many streams, in small batches, while their
// holder commits events to every one of them: every commit keeps its lease, every row ends
// under the new key, and a claim after it opens each stream's exact credentials.
func TestResealWhileHoldersCommit(t *testing.T) {
	ctx := context.Background()
	_, b := setup(t)
	k1, _ := seal.Generate()
	st1 := openStore(t, b.url, k1)
	const n = 300
	for range n {
		createUnheld(t, st1, sealedURL, sealedHeaders)
	}
	claims := claimAll(t, st1, owner)
	if len(claims) != n {
		t.Fatalf("claimed %d of %d", len(claims), n)
	}
	k2, _ := k1.WithNewPrimary()
	st2 := openStore(t, b.url, k2)

	done := make(chan struct{})
	commits := make(chan int)
	go func() {
		rounds := 0
		defer func() { commits <- rounds }()
		for seq := int64(1); ; seq++ {
			select {
			case <-done:
				return
			default:
			}
			var as []store.Append
			for id, c := range claims {
				as = append(as, store.Append{StreamID: id, Epoch: c.Epoch, Events: events(seq, seq, seqID), HeadSeq: seq, ResumeID: seqID(seq)})
			}
			res, err := st1.Commit(ctx, owner, as, store.CommitOptions{})
			if err != nil {
				t.Error(err)
				return
			}
			if len(res.Lost) != 0 {
				t.Errorf("round %d: %d streams lost their lease during the rotation", seq, len(res.Lost))
				return
			}
			rounds++
		}
	}()
	res, err := st2.Reseal(ctx, store.ResealOptions{Batch: 7})
	close(done)
	rounds := <-commits
	if err != nil {
		t.Fatal(err)
	}
	if res.Resealed != n || rounds == 0 {
		t.Fatalf("re-sealed %d of %d during %d commit rounds", res.Resealed, n, rounds)
	}
	t.Logf("re-sealed %d streams in batches of 7 during %d commit rounds", res.Resealed, rounds)
	for id, v := range sealedPrefixes(t, st2) {
		if kid, _ := seal.KeyID(v); kid != k2.Primary() {
			t.Fatalf("stream %s under key %d after the rotation", id, kid)
		}
	}
	if err := st1.ReleaseLeases(ctx, owner); err != nil {
		t.Fatal(err)
	}
	k3, _ := k2.PrimaryOnly()
	got := claimAll(t, openStore(t, b.url, k3), "after")
	if len(got) != n {
		t.Fatalf("claimed %d of %d after the rotation", len(got), n)
	}
	for _, c := range got {
		if c.Stream.URL != sealedURL || !mapsEqual(c.Stream.Headers, sealedHeaders) || c.Stream.HeadSeq != int64(rounds) {
			t.Fatalf("after the rotation: %q %v head %d of %d", c.Stream.URL, c.Stream.Headers, c.Stream.HeadSeq, rounds)
		}
	}
}

// The sealing migration goes down (a held stream whose credentials are sealed fails: they
// cannot be put back in clear) and up again.
func TestSealingMigrationDownAndUp(t *testing.T) {
	ctx := context.Background()
	_, b := setup(t)
	k, _ := seal.Generate()
	st := openStore(t, b.url, k)
	s := createUnheld(t, st, sealedURL, sealedHeaders)
	plain := createUnheld(t, st, "http://origin.test/plain", nil)
	conn, err := pgx.Connect(ctx, b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	m, err := migrate.NewMigrator(ctx, conn, "pushproxy_schema_version")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.LoadMigrations(migrations.FS); err != nil {
		t.Fatal(err)
	}
	if err := m.MigrateTo(ctx, 4); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{s.ID: pushproxy.StateFailed, plain.ID: pushproxy.StateHeld} {
		var state string
		if err := conn.QueryRow(ctx, `SELECT state FROM streams WHERE id = $1`, id).Scan(&state); err != nil || state != want {
			t.Fatalf("after the down migration: %s, %v; want %s", state, err, want)
		}
	}
	if err := m.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	createUnheld(t, st, sealedURL, sealedHeaders)
}
