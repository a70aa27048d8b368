package main

import (
	"flag"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/pushproxy/pushproxy/internal/upstream"
)

var interpolation = regexp.MustCompile(`\$\{[A-Z0-9_]+:-([^}]*)\}`)

// TestComposeSetsOnlyKnownVariables checks that every PUSHPROXY_* and ORIGIN_* variable that
// docker-compose.yml sets is one the binaries read, and that the values parse.
func TestComposeSetsOnlyKnownVariables(t *testing.T) {
	compose, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]*flag.Flag{}
	var sc serveConfig
	serve := flag.NewFlagSet("serve", flag.ContinueOnError)
	sc.flags(serve)
	serve.VisitAll(func(f *flag.Flag) { known[envName(f.Name)] = f })

	_, originBin := binaries(t)
	help, _ := exec.Command(originBin, "--help").CombinedOutput()

	re := regexp.MustCompile(`(?m)^\s+((?:PUSHPROXY|ORIGIN)_[A-Z0-9_]+):\s*(.*)$`)
	matches := re.FindAllStringSubmatch(string(compose), -1)
	if len(matches) < 5 {
		t.Fatalf("found only %d variables in docker-compose.yml", len(matches))
	}
	for _, m := range matches {
		name, value := m[1], strings.Trim(strings.TrimSpace(m[2]), `"`)
		// Compose interpolation, as with the variable unset: ${NAME:-default} is the default.
		value = interpolation.ReplaceAllString(value, "$1")
		if strings.Contains(value, "$") {
			t.Errorf("%s=%q: interpolation this test does not understand", name, value)
		}
		if strings.HasPrefix(name, "ORIGIN_") {
			if !strings.Contains(string(help), name) {
				t.Errorf("docker-compose.yml sets %s, which origin does not read", name)
			}
			continue
		}
		f, ok := known[name]
		if !ok {
			t.Errorf("docker-compose.yml sets %s, which pushproxy serve does not read", name)
			continue
		}
		if err := f.Value.Set(value); err != nil {
			t.Errorf("%s=%q: %v", name, value, err)
		}
		if name == "PUSHPROXY_UPSTREAM_ALLOW" {
			if _, err := upstream.ParseAllowList(strings.Split(value, ",")); err != nil {
				t.Errorf("%s=%q: %v", name, value, err)
			}
		}
	}
}
