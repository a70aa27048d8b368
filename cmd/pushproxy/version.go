package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

func versionCommand() command {
	return command{
		name:    "version",
		summary: "print the version, VCS revision and Go version it was built from",
		about: `Prints the module version, the VCS revision and time it was built from (and whether the
tree had uncommitted changes), and the Go version, from the build information in the binary.
"go build" records the revision; "go run" does not.`,
		setup: func(*flag.FlagSet) runFunc {
			return func(_ context.Context, _ []string, stdout, _ io.Writer, _ func(string) string) int {
				bi, _ := debug.ReadBuildInfo()
				fmt.Fprint(stdout, versionText(bi))
				return 0
			}
		},
	}
}

// versionText is what "pushproxy version" prints of bi (nil: no build information).
func versionText(bi *debug.BuildInfo) string {
	version, module, goVersion := "unknown", "unknown", runtime.Version()
	vcs := map[string]string{}
	if bi != nil {
		module, goVersion = bi.Main.Path, bi.GoVersion
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if k, ok := strings.CutPrefix(s.Key, "vcs."); ok {
				vcs[k] = s.Value
			}
		}
	}
	revision := "unknown (built without VCS information, as by go run)"
	if r := vcs["revision"]; r != "" {
		revision = r
		if t := vcs["time"]; t != "" {
			revision += " (" + t + ")"
		}
	}
	modified := vcs["modified"]
	if modified == "" {
		modified = "unknown"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "pushproxy %s\n", version)
	fmt.Fprintf(&b, "  module    %s\n", module)
	fmt.Fprintf(&b, "  revision  %s\n", revision)
	fmt.Fprintf(&b, "  modified  %s\n", modified)
	fmt.Fprintf(&b, "  go        %s %s/%s\n", goVersion, runtime.GOOS, runtime.GOARCH)
	return b.String()
}
