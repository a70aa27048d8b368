// Package envflag gives every flag of a flag.FlagSet an environment variable twin: the
// prefix and the flag name in upper snake case (--upstream-allow is PUSHPROXY_UPSTREAM_ALLOW).
// A flag on the command line wins over its variable. Both binaries, pushproxy and origin,
// use it, so that a container needs no config file.
//
// Parsing prints nothing but the usage, when it is asked for: a mistake comes back as an
// error of one line that names the flag or variable and, where it can, says what would do
// ("--lease-ttl 30: a duration needs a unit, e.g. 30s").
package envflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Name is the environment twin of flag name under prefix ("PUSHPROXY_", "ORIGIN_").
func Name(prefix, name string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Parse parses args into fs, then sets each flag not given on the command line from its
// environment twin, if set. Positional arguments are refused.
//
// When args ask for help (-h, --help) it calls fs.Usage and returns flag.ErrHelp. It prints
// nothing else: any other error is one line (the FlagSet's own output and usage are not
// used for errors).
func Parse(fs *flag.FlagSet, prefix string, args []string, getenv func(string) string) error {
	rest, err := ParsePositional(fs, prefix, args, getenv)
	if err == nil && len(rest) > 0 {
		return fmt.Errorf("unexpected argument %q", rest[0])
	}
	return err
}

// ParsePositional is Parse for a command that takes arguments besides its flags: they may
// come before, between or after the flags ("--" ends the flags), and are returned in order.
func ParsePositional(fs *flag.FlagSet, prefix string, args []string, getenv func(string) string) ([]string, error) {
	var bad badValue
	restore := quiet(fs, &bad)
	var rest []string
	err := fs.Parse(args)
	for err == nil && fs.NArg() > 0 {
		if n := len(args) - fs.NArg(); n > 0 && args[n-1] == "--" {
			rest = append(rest, fs.Args()...) // after "--", everything is an argument
			break
		}
		args = fs.Args()
		rest = append(rest, args[0])
		args = args[1:]
		err = fs.Parse(args)
	}
	restore()
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(fs)
			return nil, err
		}
		return nil, explain(fs, err, &bad)
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		env := Name(prefix, f.Name)
		if v := getenv(env); v != "" {
			if e := f.Value.Set(v); e != nil {
				err = fmt.Errorf("%s=%s: %s", env, v, why(f.Value, v, e))
			}
		}
	})
	return rest, err
}

// badValue is the flag whose value was refused during a parse.
type badValue struct {
	name, value string
	err         error
	flagValue   flag.Value
}

// recorder wraps a flag's value to note a refused value, with the flag's name: the flag
// package's own error says only "parse error" for a duration.
type recorder struct {
	flag.Value
	name string
	bad  *badValue
}

func (r recorder) Set(s string) error {
	err := r.Value.Set(s)
	if err != nil && r.bad.err == nil {
		*r.bad = badValue{name: r.name, value: s, err: err, flagValue: r.Value}
	}
	return err
}

// boolRecorder is a recorder of a boolean flag, which takes no argument.
type boolRecorder struct{ recorder }

func (boolRecorder) IsBoolFlag() bool { return true }

// quiet makes fs print nothing while it parses and records refused values in bad; the
// function it returns undoes that.
func quiet(fs *flag.FlagSet, bad *badValue) func() {
	out, use := fs.Output(), fs.Usage
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	values := map[*flag.Flag]flag.Value{}
	fs.VisitAll(func(f *flag.Flag) {
		values[f] = f.Value
		r := recorder{Value: f.Value, name: f.Name, bad: bad}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			f.Value = boolRecorder{r}
		} else {
			f.Value = r
		}
	})
	return func() {
		for f, v := range values {
			f.Value = v
		}
		fs.SetOutput(out)
		fs.Usage = use
	}
}

// usage prints fs's usage: its Usage function, or its defaults.
func usage(fs *flag.FlagSet) {
	if fs.Usage != nil {
		fs.Usage()
		return
	}
	fs.PrintDefaults()
}

// explain turns an error of fs.Parse into one line.
func explain(fs *flag.FlagSet, err error, bad *badValue) error {
	if bad.err != nil {
		return fmt.Errorf("--%s %s: %s", bad.name, bad.value, why(bad.flagValue, bad.value, bad.err))
	}
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		var names []string
		fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
		if s := Suggest(name, names); s != "" {
			return fmt.Errorf("unknown flag --%s (did you mean --%s?)", name, s)
		}
		return fmt.Errorf("unknown flag --%s", name)
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return fmt.Errorf("--%s needs a value", name)
	}
	return err
}

// why says what is wrong with value s for v, which refused it with err, and what would do.
func why(v flag.Value, s string, err error) string {
	g, ok := v.(flag.Getter)
	if !ok {
		return err.Error() // a value of our own: its error says it
	}
	switch g.Get().(type) {
	case time.Duration:
		if _, err := strconv.ParseFloat(s, 64); err == nil {
			return "a duration needs a unit, e.g. " + s + "s"
		}
		return "not a duration (e.g. 500ms, 30s, 5m, 1h30m)"
	case bool:
		return "not true or false"
	case int, int64, uint, uint64:
		if _, err := strconv.ParseInt(s, 0, 64); errors.Is(err, strconv.ErrRange) {
			return "out of range"
		}
		return "not a whole number"
	case float64:
		return "not a number"
	}
	return err.Error()
}

// Suggest returns the candidate closest to name, if one is close enough to be what was
// meant (at most two edits, or name is a prefix of it), else "".
func Suggest(name string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := distance(name, c); d < bestD && d < len(name) {
			best, bestD = c, d
		}
	}
	if best != "" {
		return best
	}
	for _, c := range candidates {
		if len(name) >= 3 && strings.HasPrefix(c, name) {
			return c
		}
	}
	return ""
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Usage returns a usage function that prints synopsis, then every flag with its environment
// twin, its description and its default.
func Usage(fs *flag.FlagSet, prefix string, w io.Writer, synopsis string) func() {
	return func() {
		fmt.Fprintln(w, synopsis)
		var lines [][3]string
		fs.VisitAll(func(f *flag.Flag) {
			def := ""
			if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "0s" && f.DefValue != "false" {
				def = " (default " + f.DefValue + ")"
			}
			lines = append(lines, [3]string{"--" + f.Name, Name(prefix, f.Name), f.Usage + def})
		})
		if len(lines) == 0 {
			return
		}
		fmt.Fprint(w, "\nFlags (each also read from its environment variable):\n")
		sort.Slice(lines, func(i, j int) bool { return lines[i][0] < lines[j][0] })
		for _, l := range lines {
			fmt.Fprintf(w, "  %-28s %s\n  %-28s   %s\n", l[0], l[1], "", l[2])
		}
	}
}

// List is a comma-separated list flag; blanks around items are dropped.
type List []string

func (l *List) String() string { return strings.Join(*l, ",") }

// Set replaces the list.
func (l *List) Set(v string) error {
	*l = nil
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}
