package upstream_test

import (
	"context"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/internal/proxytest"
	"github.com/pushproxy/pushproxy/internal/upstream"
)

// A resolver that never answers is "unavailable, try again" once the caller's wait ends,
// never the context's own error (which the API would answer as 500).
func TestCheckHostResolverTimeoutIsUnavailable(t *testing.T) {
	a, err := upstream.ParseAllowList(nil)
	if err != nil {
		t.Fatal(err)
	}
	a.Resolver, _ = proxytest.SilentResolver(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = a.CheckHost(ctx, "origin.example", "443")
	if code := pushproxy.ErrorCode(err); code != pushproxy.EUNAVAILABLE {
		t.Fatalf("CheckHost with a silent resolver: %v (code %s), want %s", err, code, pushproxy.EUNAVAILABLE)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("CheckHost took %s: the caller's deadline bounds the wait", took)
	}
}
