package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/pushproxy/pushproxy/internal/envflag"
)

// envPrefix is the environment prefix of every command's flags but the demo's.
const envPrefix = "PUSHPROXY_"

// envName is the environment twin of a flag (--upstream-allow → PUSHPROXY_UPSTREAM_ALLOW).
func envName(flagName string) string { return envflag.Name(envPrefix, flagName) }

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

// choiceFlag is a string flag that takes one of a few values, in any case.
type choiceFlag struct {
	value   string
	choices []string
}

func choice(value string, choices ...string) *choiceFlag {
	return &choiceFlag{value: value, choices: choices}
}

func (c *choiceFlag) String() string { return c.value }

func (c *choiceFlag) Set(s string) error {
	if s = strings.ToLower(s); slices.Contains(c.choices, s) {
		c.value = s
		return nil
	}
	return fmt.Errorf("not one of %s", strings.Join(c.choices, ", "))
}

// databaseURL picks the database: --database-url / PUSHPROXY_DATABASE_URL, else DATABASE_URL.
// "" means: manage a local cluster.
func databaseURL(flagValue string, getenv func(string) string) string {
	if flagValue != "" {
		return flagValue
	}
	return getenv("DATABASE_URL")
}
