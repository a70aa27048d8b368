package envflag

import (
	"bytes"
	"errors"
	"flag"
	"slices"
	"strings"
	"testing"
	"time"
)

type testFlags struct {
	fs      *flag.FlagSet
	ttl     time.Duration
	n       int
	rate    float64
	verbose bool
	name    string
	list    List
	usage   *bytes.Buffer
}

func newTestFlags() *testFlags {
	f := &testFlags{fs: flag.NewFlagSet("t", flag.ContinueOnError), usage: &bytes.Buffer{}}
	f.fs.DurationVar(&f.ttl, "lease-ttl", 30*time.Second, "a duration")
	f.fs.IntVar(&f.n, "max-backlog", 10, "an int")
	f.fs.Float64Var(&f.rate, "rate", 1, "a float")
	f.fs.BoolVar(&f.verbose, "verbose", false, "a bool")
	f.fs.StringVar(&f.name, "name", "", "a string")
	f.fs.Var(&f.list, "upstream-allow", "a list")
	f.fs.Usage = Usage(f.fs, "T_", f.usage, "Usage: t [flags]")
	return f
}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParseCommandLineBeatsEnvironment(t *testing.T) {
	f := newTestFlags()
	e := env(map[string]string{"T_LEASE_TTL": "7s", "T_NAME": "from-env", "T_UPSTREAM_ALLOW": "a, b", "T_VERBOSE": "true"})
	if err := Parse(f.fs, "T_", []string{"--lease-ttl", "9s", "--rate=2.5"}, e); err != nil {
		t.Fatal(err)
	}
	if f.ttl != 9*time.Second || f.rate != 2.5 || f.name != "from-env" || !slices.Equal(f.list, List{"a", "b"}) || !f.verbose || f.n != 10 {
		t.Fatalf("%+v", f)
	}
	if f.usage.Len() != 0 {
		t.Fatalf("printed %q", f.usage)
	}
}

func TestParseBoolFlagTakesNoValue(t *testing.T) {
	f := newTestFlags()
	rest, err := ParsePositional(f.fs, "T_", []string{"--verbose", "ID", "--name", "x"}, env(nil))
	if err != nil || !f.verbose || f.name != "x" || !slices.Equal(rest, []string{"ID"}) {
		t.Fatalf("rest %q err %v verbose %v name %q", rest, err, f.verbose, f.name)
	}
	// The flags keep their own values once parsed.
	if _, ok := f.fs.Lookup("verbose").Value.(flag.Getter); !ok {
		t.Fatal("the bool flag's value was not restored")
	}
}

func TestParsePositional(t *testing.T) {
	for _, tc := range []struct {
		args, rest []string
		name       string
	}{
		{[]string{"a", "--name", "n", "b"}, []string{"a", "b"}, "n"},
		{[]string{"--name", "n", "--", "--x", "y"}, []string{"--x", "y"}, "n"},
		{[]string{"a", "--", "-b"}, []string{"a", "-b"}, ""},
		{nil, nil, ""},
	} {
		f := newTestFlags()
		rest, err := ParsePositional(f.fs, "T_", tc.args, env(nil))
		if err != nil || !slices.Equal(rest, tc.rest) || f.name != tc.name {
			t.Errorf("%q: rest %q name %q err %v", tc.args, rest, f.name, err)
		}
	}
	f := newTestFlags()
	if err := Parse(f.fs, "T_", []string{"--name", "n", "extra"}, env(nil)); err == nil || err.Error() != `unexpected argument "extra"` {
		t.Errorf("Parse took an argument: %v", err)
	}
}

func TestParseHelp(t *testing.T) {
	for _, arg := range []string{"-h", "--help", "-help"} {
		f := newTestFlags()
		if err := Parse(f.fs, "T_", []string{"--name", "x", arg}, env(nil)); !errors.Is(err, flag.ErrHelp) {
			t.Fatalf("%s: %v", arg, err)
		}
		u := f.usage.String()
		if strings.Count(u, "Usage: t [flags]") != 1 || !strings.Contains(u, "--lease-ttl") || !strings.Contains(u, "T_LEASE_TTL") || !strings.Contains(u, "(default 30s)") {
			t.Fatalf("%s: usage %q", arg, u)
		}
	}
}

// TestParseErrors: every mistake is one line naming the flag or variable, with the fix when
// there is one; nothing is printed.
func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--lease-ttl", "30"}, nil, "--lease-ttl 30: a duration needs a unit, e.g. 30s"},
		{[]string{"--lease-ttl=1.5"}, nil, "--lease-ttl 1.5: a duration needs a unit, e.g. 1.5s"},
		{[]string{"--lease-ttl", "soon"}, nil, "--lease-ttl soon: not a duration (e.g. 500ms, 30s, 5m, 1h30m)"},
		{nil, map[string]string{"T_LEASE_TTL": "30"}, "T_LEASE_TTL=30: a duration needs a unit, e.g. 30s"},
		{[]string{"--max-backlog", "1e3"}, nil, "--max-backlog 1e3: not a whole number"},
		{[]string{"--max-backlog", "99999999999999999999"}, nil, "--max-backlog 99999999999999999999: out of range"},
		{nil, map[string]string{"T_MAX_BACKLOG": "x"}, "T_MAX_BACKLOG=x: not a whole number"},
		{[]string{"--rate", "fast"}, nil, "--rate fast: not a number"},
		{[]string{"--verbose=maybe"}, nil, "--verbose maybe: not true or false"},
		{nil, map[string]string{"T_VERBOSE": "yes"}, "T_VERBOSE=yes: not true or false"},
		{[]string{"--lease-tl", "3s"}, nil, "unknown flag --lease-tl (did you mean --lease-ttl?)"},
		{[]string{"--upstream"}, nil, "unknown flag --upstream (did you mean --upstream-allow?)"},
		{[]string{"-x"}, nil, "unknown flag --x"},
		{[]string{"--name"}, nil, "--name needs a value"},
		{[]string{"---name"}, nil, "bad flag syntax: ---name"},
	} {
		f := newTestFlags()
		err := Parse(f.fs, "T_", tc.args, env(tc.env))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q %v: got %v, want %q", tc.args, tc.env, err, tc.want)
		}
		if f.usage.Len() != 0 {
			t.Errorf("%q: printed %q", tc.args, f.usage)
		}
	}
}

func TestSuggest(t *testing.T) {
	names := []string{"serve", "streams", "lease-ttl", "listen", "upstream-allow"}
	for in, want := range map[string]string{
		"serv": "serve", "stream": "streams", "lease-tll": "lease-ttl", "lsiten": "listen",
		"upstream": "upstream-allow", "x": "", "frobnicate": "", "ab": "",
	} {
		if got := Suggest(in, names); got != want {
			t.Errorf("Suggest(%q) = %q, want %q", in, got, want)
		}
	}
}
