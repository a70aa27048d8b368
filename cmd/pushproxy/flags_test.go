package main

import (
	"flag"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/internal/envflag"
)

// readmeTable returns the rows of the first table after heading in the README, each as its
// cells with the surrounding blanks trimmed.
func readmeTable(t *testing.T, readme, heading string) [][]string {
	t.Helper()
	i := strings.Index(readme, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("README has no %q", heading)
	}
	var rows [][]string
	for _, line := range strings.Split(readme[i+len(heading)+2:], "\n") {
		if !strings.HasPrefix(line, "|") {
			if len(rows) > 0 {
				break
			}
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for k := range cells {
			cells[k] = strings.TrimSpace(cells[k])
		}
		if cells[0] != "flag" && !strings.HasPrefix(cells[0], "---") {
			rows = append(rows, cells)
		}
	}
	return rows
}

// TestReadmeFlagTables: the README's tables of serve's and the demo's flags list exactly the
// flags the commands have, each with its environment twin and its default.
func TestReadmeFlagTables(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	for _, name := range []string{"serve", "demo"} {
		c := commandNamed(t, name)
		code := map[string]*flag.Flag{}
		for _, f := range flagsOf(c) {
			code[f.Name] = f
		}
		seen := map[string]bool{}
		for _, row := range readmeTable(t, readme, "### `pushproxy "+name+"`") {
			fname := strings.TrimPrefix(strings.Trim(row[0], "`"), "--")
			f := code[fname]
			if f == nil {
				t.Errorf("%s: the README lists --%s, which the command does not have", name, fname)
				continue
			}
			seen[fname] = true
			if want := "`" + envflag.Name(c.envPrefix(), fname) + "`"; row[1] != want {
				t.Errorf("%s --%s: the README gives the variable %s, the command reads %s", name, fname, row[1], want)
			}
			if !sameDefault(row[2], f.DefValue) {
				t.Errorf("%s --%s: the README gives the default %q, the command has %q", name, fname, row[2], f.DefValue)
			}
		}
		for fname := range code {
			if !seen[fname] {
				t.Errorf("%s: the README's table lacks --%s", name, fname)
			}
		}
	}
	// The other commands' flags are named.
	for _, c := range commands() {
		for _, f := range flagsOf(c) {
			if !strings.Contains(readme, "--"+f.Name) {
				t.Errorf("the README does not name %s's --%s", c.name, f.Name)
			}
		}
	}
}

// sameDefault tells whether a README default cell documents def: a code span holds the
// value (a duration may be written shorter: 5m for 5m0s); prose or nothing stands for an
// empty default (host-pid-random for the instance id).
func sameDefault(cell, def string) bool {
	v, ok := strings.CutPrefix(cell, "`")
	if !ok {
		return def == ""
	}
	v = strings.TrimSuffix(v, "`")
	if a, err := time.ParseDuration(v); err == nil {
		if b, err := time.ParseDuration(def); err == nil {
			return a == b
		}
	}
	return v == def
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
