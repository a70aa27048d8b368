package main

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"flag"
	"io"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"

	"github.com/pushproxy/pushproxy/internal/envflag"
)

// runCLI runs the command line in process with the environment env, and returns its exit
// code, stdout and stderr.
func runCLI(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut, func(k string) string { return env[k] })
	return code, out.String(), errOut.String()
}

// flagsOf returns the flags of c.
func flagsOf(c command) []*flag.Flag {
	fs, _ := c.flagSet(io.Discard)
	var flags []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) { flags = append(flags, f) })
	return flags
}

// TestHelp: the top-level help, in each of its spellings, lists every command and group on
// stdout and exits 0.
func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"-help"}, {"help"}} {
		code, out, errOut := runCLI(t, nil, args...)
		if code != 0 || errOut != "" {
			t.Fatalf("%v: exit %d, stderr %q", args, code, errOut)
		}
		for _, c := range commands() {
			first, _, _ := strings.Cut(c.name, " ")
			if !regexp.MustCompile(`(?m)^  ` + first + ` +\S`).MatchString(out) {
				t.Errorf("%v does not list %q with a line of its own:\n%s", args, first, out)
			}
		}
	}
	// Without a command: the same list, as a usage error.
	if code, out, errOut := runCLI(t, nil); code != 2 || out != "" || !strings.Contains(errOut, "  serve ") {
		t.Errorf("no command: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// TestEveryCommandHelp: "<command> --help" (and -h, and "help <command>") of every command and
// subcommand prints its usage with every flag and environment twin on stdout, and exits 0;
// so does "<group> --help", listing the group's commands.
func TestEveryCommandHelp(t *testing.T) {
	cs := commands()
	if len(cs) < 14 {
		t.Fatalf("only %d commands", len(cs))
	}
	for _, c := range cs {
		words := strings.Fields(c.name)
		for _, args := range [][]string{append(words, "--help"), append(words, "-h"), append([]string{"help"}, words...)} {
			code, out, errOut := runCLI(t, nil, args...)
			if code != 0 || errOut != "" || !strings.HasPrefix(out, "Usage: pushproxy "+c.name) {
				t.Errorf("%v: exit %d, stderr %q, stdout:\n%s", args, code, errOut, out)
				continue
			}
			for _, f := range flagsOf(c) {
				for _, want := range []string{"--" + f.Name + " ", envflag.Name(c.envPrefix(), f.Name)} {
					if !strings.Contains(out, want) {
						t.Errorf("%v does not name %q:\n%s", args, want, out)
					}
				}
			}
		}
	}
	for _, g := range groups {
		code, out, errOut := runCLI(t, nil, g.name, "--help")
		if code != 0 || errOut != "" {
			t.Errorf("%s --help: exit %d, stderr %q", g.name, code, errOut)
		}
		n := 0
		for _, c := range cs {
			if strings.HasPrefix(c.name, g.name+" ") {
				n++
				if !strings.Contains(out, "\n  "+c.name) {
					t.Errorf("%s --help does not list %q:\n%s", g.name, c.name, out)
				}
			}
		}
		if n == 0 {
			t.Errorf("group %s has no commands", g.name)
		}
	}
}

// TestUsageErrors: a usage error is one line on stderr, nothing on stdout, exit 2; the line
// says what is wrong and how to put it right.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"serve", "--lease-ttl", "30"}, nil, `pushproxy serve: --lease-ttl 30: a duration needs a unit, e.g. 30s`},
		{[]string{"serve"}, map[string]string{"PUSHPROXY_LEASE_TTL": "30"}, `PUSHPROXY_LEASE_TTL=30: a duration needs a unit, e.g. 30s`},
		{[]string{"serve", "--lease-ttl=soon"}, nil, `--lease-ttl soon: not a duration (e.g. 500ms, 30s, 5m, 1h30m)`},
		{[]string{"serve", "--lease-tl", "30s"}, nil, `pushproxy serve: unknown flag --lease-tl (did you mean --lease-ttl?); see "pushproxy serve --help"`},
		{[]string{"serve", "--frobnicate"}, nil, `unknown flag --frobnicate; see "pushproxy serve --help"`},
		{[]string{"serve", "--max-backlog", "lots"}, nil, `--max-backlog lots: not a whole number`},
		{[]string{"serve", "--migrate=maybe"}, nil, `--migrate maybe: not true or false`},
		{[]string{"serve", "--log-level", "loud"}, nil, `--log-level loud: not one of debug, info, warn, error`},
		{[]string{"serve", "--listen"}, nil, `--listen needs a value`},
		{[]string{"serve", "now"}, nil, `unexpected argument "now"`},
		{[]string{"demo", "--rate", "fast"}, nil, `pushproxy demo: --rate fast: not a number`},
		{[]string{"demo"}, map[string]string{"PUSHPROXY_DEMO_SLEEP": "5"}, `PUSHPROXY_DEMO_SLEEP=5: a duration needs a unit, e.g. 5s`},
		{[]string{"migrate", "sideways"}, nil, `unexpected argument "sideways" (the action is up or status)`},
		{[]string{"fakes", "--apns-listen"}, nil, `pushproxy fakes: --apns-listen needs a value`},
		{[]string{"version", "--short"}, nil, `pushproxy version: unknown flag --short; see "pushproxy version --help"`},
		{[]string{"serv"}, nil, `pushproxy: unknown command "serv" (did you mean "serve"?); see "pushproxy --help"`},
		{[]string{"streams", "lst"}, nil, `pushproxy: unknown command "streams lst" (did you mean "list"?); see "pushproxy streams --help"`},
		{[]string{"streams", "show"}, nil, `pushproxy streams show: an id is required; see "pushproxy streams show --help"`},
		{[]string{"streams", "show", "a", "b"}, nil, `unexpected argument "b"`},
		{[]string{"streams", "list", "--sort", "size"}, nil, `--sort size: not one of backlog, age, errors`},
		{[]string{"backlog", "top", "--limit", "ten"}, nil, `--limit ten: not a whole number`},
	} {
		code, out, errOut := runCLI(t, tc.env, tc.args...)
		if code != 2 || out != "" || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v %v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", tc.args, tc.env, code, out, errOut, tc.want)
		}
	}
	// A group without a command lists its commands, as a usage error.
	if code, out, errOut := runCLI(t, nil, "backlog"); code != 2 || out != "" || !strings.Contains(errOut, "backlog totals") {
		t.Errorf("backlog: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// TestFlagsAnywhere: an operator command's id may come before, between or after its flags.
func TestFlagsAnywhere(t *testing.T) {
	c := commandNamed(t, "streams show")
	for _, args := range [][]string{{"ID", "--json"}, {"--json", "ID"}, {"--json", "ID", "--server", "http://x"}, {"--", "ID"}} {
		fs, _ := c.flagSet(io.Discard)
		rest, err := envflag.ParsePositional(fs, envPrefix, args, func(string) string { return "" })
		if err != nil || !slices.Equal(rest, []string{"ID"}) || fs.Lookup("json").Value.String() != "true" && args[0] != "--" {
			t.Errorf("%v: args %q, error %v", args, rest, err)
		}
	}
}

func commandNamed(t *testing.T, name string) command {
	t.Helper()
	for _, c := range commands() {
		if c.name == name {
			return c
		}
	}
	t.Fatalf("no command %q", name)
	return command{}
}

// TestDemoReadsOnlyItsOwnVariables: the demo's flags come from PUSHPROXY_DEMO_* and never from
// serve's variables, even when those are set (to garbage, here).
func TestDemoReadsOnlyItsOwnVariables(t *testing.T) {
	env := map[string]string{
		"PUSHPROXY_DATABASE_URL": "postgres://garbage@nowhere.invalid/x",
		"DATABASE_URL":           "postgres://garbage@nowhere.invalid/y",
		"PUSHPROXY_LOG_LEVEL":    "garbage",
		"PUSHPROXY_SLEEP":        "garbage",
		"PUSHPROXY_RATE":         "garbage",
		"PUSHPROXY_DEMO_SLEEP":   "3s",
	}
	var asked []string
	getenv := func(k string) string { asked = append(asked, k); return env[k] }
	c := commandNamed(t, "demo")
	fs, _ := c.flagSet(io.Discard)
	if err := envflag.Parse(fs, c.envPrefix(), nil, getenv); err != nil {
		t.Fatal(err)
	}
	for _, k := range asked {
		if !strings.HasPrefix(k, "PUSHPROXY_DEMO_") {
			t.Errorf("the demo read %s", k)
		}
	}
	if len(asked) != len(flagsOf(c)) {
		t.Errorf("the demo read %v", asked)
	}
	if got := fs.Lookup("database-url").Value.String(); got != "" {
		t.Errorf("database-url %q", got)
	}
	if got := fs.Lookup("sleep").Value.String(); got != "3s" {
		t.Errorf("sleep %q, want PUSHPROXY_DEMO_SLEEP's 3s", got)
	}
	if got := fs.Lookup("log-level").Value.String(); got != "error" {
		t.Errorf("log-level %q", got)
	}
}

// TestVersion: "pushproxy version" prints the module, version, VCS revision, modified flag
// and Go version of its build information.
func TestVersion(t *testing.T) {
	bi := &debug.BuildInfo{
		GoVersion: "go1.99.1",
		Main:      debug.Module{Path: "github.com/pushproxy/pushproxy", Version: "v1.2.3"},
		Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
			{Key: "vcs.time", Value: "2026-11-27T14:02:41Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	want := "pushproxy v1.2.3\n" +
		"  module    github.com/pushproxy/pushproxy\n" +
		"  revision  0123456789abcdef0123456789abcdef01234567 (2026-11-27T14:02:41Z)\n" +
		"  modified  true\n" +
		"  go        go1.99.1 " + runtime.GOOS + "/" + runtime.GOARCH + "\n"
	if got := versionText(bi); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	bi.Settings, bi.Main.Version = nil, "(devel)"
	if got := versionText(bi); !strings.Contains(got, "pushproxy (devel)\n") || !strings.Contains(got, "revision  unknown") || !strings.Contains(got, "modified  unknown") {
		t.Errorf("without VCS information:\n%s", got)
	}

	// The command itself, in this test binary.
	for _, arg := range []string{"version", "--version"} {
		code, out, errOut := runCLI(t, nil, arg)
		if code != 0 || errOut != "" || !strings.HasPrefix(out, "pushproxy ") || !strings.Contains(out, runtime.Version()) {
			t.Errorf("%s: exit %d, stderr %q, stdout:\n%s", arg, code, errOut, out)
		}
	}
}

// TestVersionOfBuiltBinary: a built pushproxy prints the revision and modified flag that its
// build information holds: go build records them in a git checkout unless -buildvcs=false,
// and either way the command must print what the binary holds.
func TestVersionOfBuiltBinary(t *testing.T) {
	bin, _ := binaries(t)
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	out, err := runBinary(bin, "version")
	if err != nil {
		t.Fatalf("pushproxy version: %v\n%s", err, out)
	}
	rev, modified := "unknown", "unknown"
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	for _, want := range []string{"pushproxy " + bi.Main.Version + "\n", "  revision  " + rev, "  modified  " + modified + "\n", "  go        " + bi.GoVersion + " "} {
		if !strings.Contains(out, want) {
			t.Errorf("pushproxy version lacks %q:\n%s", want, out)
		}
	}
}

func runBinary(bin string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// commandsNamed returns every pushproxy command line that markdown names: the lines of its
// code blocks and its inline code spans that run pushproxy (as "pushproxy", "./pushproxy",
// "bin/pushproxy" or "go run ./cmd/pushproxy", after a "$ " prompt or VAR=value
// assignments), cut to their command words (up to the first flag, placeholder or variable).
func commandsNamed(markdown string) [][]string {
	var lines []string
	inBlock := false
	for _, line := range strings.Split(markdown, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inBlock = !inBlock
			continue
		}
		if inBlock {
			lines = append(lines, line)
			continue
		}
		for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(line, -1) {
			lines = append(lines, m[1])
		}
	}
	start := regexp.MustCompile(`^\s*(?:\$ )?(?:[A-Z_]+=\S* +)*(?:pushproxy|\./pushproxy|bin/pushproxy|go run \./cmd/pushproxy)((?: +[a-z][a-z-]*)*)(?:\s|$)`)
	var cmds [][]string
	for _, l := range lines {
		if m := start.FindStringSubmatch(l); m != nil && strings.TrimSpace(m[1]) != "" {
			cmds = append(cmds, strings.Fields(m[1]))
		}
	}
	return cmds
}

func TestCommandsNamed(t *testing.T) {
	md := "Run `pushproxy serve --help`, or `go run ./cmd/pushproxy demo`; `pushproxy-data` and `pushproxy` are not commands.\n" +
		"```sh\n" +
		"$ bin/pushproxy streams show <id>\n" +
		"PUSHPROXY_ADMIN_TOKEN=x ./pushproxy backlog top --limit 3   # a comment\n" +
		"pushproxy migrate status\n" +
		"time=... msg=\"pushproxy serving\" addr=:8080\n" +
		"  pushproxy version\n" +
		"pushproxy streams close $ID\n" +
		"```\n" +
		"pushproxy is not in code here.\n"
	got := commandsNamed(md)
	want := [][]string{{"serve"}, {"demo"}, {"streams", "show"}, {"backlog", "top"}, {"migrate", "status"}, {"version"}, {"streams", "close"}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestReadmeCommandsExist: every pushproxy command the README names exists (its --help
// exits 0), and every command the CLI has is named in the README.
func TestReadmeCommandsExist(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{}
	for _, words := range commandsNamed(string(readme)) {
		code, out, errOut := runCLI(t, nil, append(slices.Clip(words), "--help")...)
		if code != 0 || out == "" {
			t.Errorf("the README names \"pushproxy %s\": --help exits %d: %s", strings.Join(words, " "), code, errOut)
		}
		for i := range words {
			named[strings.Join(words[:i+1], " ")] = true
		}
	}
	for _, c := range commands() {
		if !named[c.name] {
			t.Errorf("the README does not name \"pushproxy %s\"", c.name)
		}
	}
}

// TestReadmeHelp: the README shows pushproxy --help as it is.
func TestReadmeHelp(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const start = "$ pushproxy --help\n"
	_, block, ok := strings.Cut(string(readme), start)
	block, _, _ = strings.Cut(block, "```")
	if !ok || block != topUsage() {
		t.Errorf("the README's pushproxy --help differs from the command's:\n%s", block)
	}
}
