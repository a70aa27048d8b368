// Package browsertest finds the Chromium that browser tests drive.
package browsertest

import (
	"os"
	"testing"
)

// Chromium returns the path of a Chromium to drive, or skips the test. CI sets
// PUSHPROXY_REQUIRE_BROWSER=1 so that a missing browser fails instead; PUSHPROXY_CHROMIUM
// names one explicitly.
func Chromium(t testing.TB) string {
	t.Helper()
	for _, p := range []string{os.Getenv("PUSHPROXY_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("PUSHPROXY_REQUIRE_BROWSER") != "" {
		t.Fatal("no Chromium found and PUSHPROXY_REQUIRE_BROWSER is set: apt-get install chromium")
	}
	t.Skip("no Chromium: apt-get install chromium to run the browser tests")
	return ""
}
