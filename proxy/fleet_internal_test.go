package proxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/store"
)

// TestHandoffRacingStopLeavesTheStreamClaimable: a handoff's insert commits while Stop runs
// (after Stop released the instance's leases and deleted its instance row): the stream must
// not stay leased to an instance that no longer exists; another instance claims it at its
// next claim, long before any renewal-time sweep.
func TestHandoffRacingStopLeavesTheStreamClaimable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, st := internalStore(t)
	origin := quietOrigin(t)
	allow, _ := upstream.ParseAllowList([]string{"127.0.0.0/8"})
	// Long leases: no renewal (nor its sweep of ownerless leases) runs during the test.
	opts := Options{Upstream: allow, LeaseTTL: time.Minute, ClaimInterval: 20 * time.Millisecond}
	oa := opts
	oa.InstanceID = "a"
	a := New(st, url, &oa)
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	a.testHandoff = func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := a.Stop(sctx); err != nil {
			t.Error(err)
		}
	}
	created, err := a.Handoff(ctx, store.NewStream{URL: origin.URL, TokenHash: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	ob := opts
	ob.InstanceID = "b"
	b := New(st, url, &ob)
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := b.Stop(sctx); err != nil {
			t.Error(err)
		}
	}()
	deadline := time.Now().Add(3 * time.Second)
	for b.Held() != 1 {
		if time.Now().After(deadline) {
			var owner *string
			_ = st.Pool().QueryRow(ctx, `SELECT lease_owner FROM streams WHERE id = $1`, created.ID).Scan(&owner)
			t.Fatalf("the stream handed off during Stop is not claimed after 3s (lease owner %v)", deref(owner))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func deref(s *string) string {
	if s == nil {
		return "none"
	}
	return *s
}

// internalStore creates a migrated database for the test and opens a store on it, closed when
// the test ends.
func internalStore(t *testing.T) (string, *store.Store) {
	t.Helper()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	if err := store.Migrate(ctx, url, nil); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return url, st
}

// quietOrigin is an origin whose event streams never send anything, closed when the test
// ends.
func quietOrigin(t *testing.T) *httptest.Server {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(func() {
		origin.CloseClientConnections()
		origin.Close()
	})
	return origin
}
