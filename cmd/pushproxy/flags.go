package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

// envName is the environment twin of a flag: PUSHPROXY_ and the name in upper snake case
// (--upstream-allow → PUSHPROXY_UPSTREAM_ALLOW).
func envName(flagName string) string {
	return "PUSHPROXY_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags parses args into fs, after taking each flag not given on the command line from
// its environment twin. The command line wins over the environment.
func parseFlags(fs *flag.FlagSet, args []string, getenv func(string) string) error {
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
		if v := getenv(envName(f.Name)); v != "" {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", envName(f.Name), v, e)
			}
		}
	})
	return err
}

// usage prints a subcommand's flags with their environment twins and defaults.
func usage(fs *flag.FlagSet, w io.Writer, synopsis string) func() {
	return func() {
		fmt.Fprintf(w, "%s\n\nFlags (each also read from its environment variable):\n", synopsis)
		var lines [][3]string
		fs.VisitAll(func(f *flag.Flag) {
			def := ""
			if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "0s" && f.DefValue != "false" {
				def = " (default " + f.DefValue + ")"
			}
			lines = append(lines, [3]string{"--" + f.Name, envName(f.Name), f.Usage + def})
		})
		sort.Slice(lines, func(i, j int) bool { return lines[i][0] < lines[j][0] })
		for _, l := range lines {
			fmt.Fprintf(w, "  %-28s %s\n  %-28s   %s\n", l[0], l[1], "", l[2])
		}
	}
}

// listFlag is a comma-separated list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	*l = nil
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

// secretListFlag is a list whose values never print (API keys).
type secretListFlag struct{ listFlag }

func (l *secretListFlag) String() string {
	if len(l.listFlag) == 0 {
		return ""
	}
	return "<redacted>"
}

// databaseURL picks the database: --database-url / PUSHPROXY_DATABASE_URL, else DATABASE_URL.
// "" means: manage a local cluster.
func databaseURL(flagValue string, getenv func(string) string) string {
	if flagValue != "" {
		return flagValue
	}
	return getenv("DATABASE_URL")
}

// parseCommand parses a subcommand's flags. When it reports false, the command ends with the
// code it returns: 0 after --help, 2 after a usage error (already reported on stderr).
func parseCommand(fs *flag.FlagSet, name string, args []string, getenv func(string) string, stderr io.Writer) (int, bool) {
	if err := parseFlags(fs, args, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		fmt.Fprintf(stderr, "pushproxy %s: %v\n", name, err)
		return 2, false
	}
	return 0, true
}
