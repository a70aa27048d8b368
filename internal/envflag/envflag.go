// Package envflag gives every flag of a flag.FlagSet an environment variable twin: the
// prefix and the flag name in upper snake case (--upstream-allow is PUSHPROXY_UPSTREAM_ALLOW).
// A flag on the command line wins over its variable. Both binaries, pushproxy and origin,
// use it, so that a container needs no config file.
package envflag

import (
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Name is the environment twin of flag name under prefix ("PUSHPROXY_", "ORIGIN_").
func Name(prefix, name string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Parse parses args into fs, then sets each flag not given on the command line from its
// environment twin, if set. Positional arguments are refused.
func Parse(fs *flag.FlagSet, prefix string, args []string, getenv func(string) string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		env := Name(prefix, f.Name)
		if v := getenv(env); v != "" {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", env, v, e)
			}
		}
	})
	return err
}

// Usage returns a usage function that prints synopsis, then every flag with its environment
// twin, its description and its default.
func Usage(fs *flag.FlagSet, prefix string, w io.Writer, synopsis string) func() {
	return func() {
		fmt.Fprintf(w, "%s\n\nFlags (each also read from its environment variable):\n", synopsis)
		var lines [][3]string
		fs.VisitAll(func(f *flag.Flag) {
			def := ""
			if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "0s" && f.DefValue != "false" {
				def = " (default " + f.DefValue + ")"
			}
			lines = append(lines, [3]string{"--" + f.Name, Name(prefix, f.Name), f.Usage + def})
		})
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
