package main

import (
	"flag"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/pushproxy/pushproxy/internal/envflag"
)

// TestEveryFlagHasADocumentedEnvTwin checks that each flag of serve, migrate and demo is read
// from its environment variable and listed in the README.
func TestEveryFlagHasADocumentedEnvTwin(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var sc serveConfig
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	sc.flags(fs)
	fs.VisitAll(func(f *flag.Flag) {
		for _, s := range []string{"`--" + f.Name + "`", "`" + envName(f.Name) + "`"} {
			if !strings.Contains(string(readme), s) {
				t.Errorf("README does not document %s", s)
			}
		}
	})
}

func TestEnvironmentSetsFlagsAndCommandLineWins(t *testing.T) {
	var sc serveConfig
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	sc.flags(fs)
	env := map[string]string{"PUSHPROXY_LISTEN": "127.0.0.1:9", "PUSHPROXY_LEASE_TTL": "7s", "PUSHPROXY_UPSTREAM_ALLOW": "a.example,10.0.0.0/8"}
	if err := envflag.Parse(fs, envPrefix, []string{"--lease-ttl", "9s"}, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if sc.Listen != "127.0.0.1:9" || sc.Proxy.LeaseTTL.String() != "9s" || strings.Join(sc.Allow, " ") != "a.example 10.0.0.0/8" {
		t.Fatalf("listen %q lease %s allow %q", sc.Listen, sc.Proxy.LeaseTTL, sc.Allow)
	}
	fs = flag.NewFlagSet("serve", flag.ContinueOnError)
	sc.flags(fs)
	if err := envflag.Parse(fs, envPrefix, nil, func(k string) string { return map[string]string{"PUSHPROXY_LEASE_TTL": "soon"}[k] }); err == nil || !strings.Contains(err.Error(), "PUSHPROXY_LEASE_TTL") {
		t.Fatalf("a bad environment value must be reported with its name, got %v", err)
	}
}

// TestOriginFlagsAreDocumented checks that the README lists every environment variable the
// reference origin reads.
func TestOriginFlagsAreDocumented(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, originBin := binaries(t)
	help, _ := exec.Command(originBin, "--help").CombinedOutput()
	names := regexp.MustCompile(`ORIGIN_[A-Z_]+`).FindAllString(string(help), -1)
	if len(names) < 10 {
		t.Fatalf("origin --help lists only %v", names)
	}
	for _, n := range names {
		if !strings.Contains(string(readme), "`"+n+"`") {
			t.Errorf("README does not document %s", n)
		}
	}
}
