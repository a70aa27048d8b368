package proxy_test

import (
	"os"
	"testing"

	"github.com/pushproxy/pushproxy/internal/proxytest"
	"github.com/pushproxy/pushproxy/proxy"
)

func TestMain(m *testing.M) { os.Exit(proxytest.Main(m)) }

// The harness shared with the api package's tests, under the names these tests use.
type (
	testBundle    = proxytest.Bundle
	handoffResult = proxytest.HandoffResult
	streamInfo    = proxytest.StreamInfo
)

var (
	do              = proxytest.Do
	adminGet        = proxytest.AdminGet
	handoff         = proxytest.Handoff
	getStream       = proxytest.GetStream
	fetchJSON       = proxytest.FetchJSON
	eventually      = proxytest.Eventually
	newOrigin       = proxytest.NewOrigin
	newScriptOrigin = proxytest.NewScriptOrigin
)

// setup starts a Service (with opts) and its HTTP API on a fresh database.
func setup(t *testing.T, opts *proxy.Options) (*proxy.Service, *testBundle) {
	t.Helper()
	return proxytest.Start(t, opts, nil)
}
