package api_test

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/internal/openapicheck"
	"github.com/pushproxy/pushproxy/internal/proxytest"
	"github.com/pushproxy/pushproxy/proxy"
)

func TestMain(m *testing.M) {
	// Every request the API servers of these tests receive, and every answer, is checked
	// against api/openapi.yaml.
	proxytest.CheckOpenAPI = true
	code := proxytest.Main(m)
	if testing.Verbose() && code == 0 {
		if s, err := openapicheck.Load(); err == nil {
			fmt.Printf("openapi: %d exchanges checked; %d described answers no test made the API give:\n\t%s\n",
				openapicheck.Checked(), len(s.Unexercised()), strings.Join(s.Unexercised(), "\n\t"))
		}
	}
	os.Exit(code)
}

// The harness shared with the proxy package's tests, under the names these tests use.
type (
	testBundle    = proxytest.Bundle
	handoffResult = proxytest.HandoffResult
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
	fcmToken        = proxytest.FCMToken
	apnsToken       = proxytest.APNsToken
)

// setup starts a proxy.Service and its HTTP API (with opts) on a fresh database.
func setup(t *testing.T, opts *api.Options) (*proxy.Service, *testBundle) {
	t.Helper()
	return proxytest.Start(t, nil, opts)
}
