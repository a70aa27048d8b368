package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/pushproxy/pushproxy/internal/envflag"
)

const envPrefix = "PUSHPROXY_"

// envName is the environment twin of a flag (--upstream-allow → PUSHPROXY_UPSTREAM_ALLOW).
func envName(flagName string) string { return envflag.Name(envPrefix, flagName) }

// parseFlags parses args into fs, then each flag not given from its environment twin.
func parseFlags(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	return envflag.Parse(fs, envPrefix, args, getenv)
}

// usage prints a subcommand's flags with their environment twins and defaults.
func usage(fs *flag.FlagSet, w io.Writer, synopsis string) func() {
	return envflag.Usage(fs, envPrefix, w, synopsis)
}

// listFlag is a comma-separated list.
type listFlag = envflag.List

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
