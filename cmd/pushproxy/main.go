// Command pushproxy is the push proxy for Server-Sent Events, and its operator tools.
//
//	pushproxy serve     run the proxy (with a local Postgres when no database URL is given)
//	pushproxy migrate   apply database migrations, or show their status
//	pushproxy demo      run the whole flow on this machine and print a timeline
//	pushproxy fakes     run a fake APNs and a fake FCM, for integrating apps
//	pushproxy keys      generate and rotate the keys sealing forwarded credentials
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}

const topUsage = `Usage: pushproxy <command> [flags]

Commands:
  serve     run the push proxy (HTTP API + upstream holders)
  migrate   database migrations: "migrate up" (default) or "migrate status"
  demo      run origin, proxy and a sleeping device on this machine and print the timeline
  keys      keys sealing forwarded credentials: "keys generate", "keys rotate"

Run "pushproxy <command> --help" for a command's flags. Every flag can also be set with
its environment variable: PUSHPROXY_ and the flag name in upper case (--listen is
PUSHPROXY_LISTEN).
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, topUsage)
		return 2
	}
	switch args[0] {
	case "serve":
		return runServe(ctx, args[1:], stdout, stderr, getenv)
	case "migrate":
		return runMigrate(ctx, args[1:], stdout, stderr, getenv)
	case "demo":
		return runDemo(ctx, args[1:], stdout, stderr, getenv)
	case "fakes":
		return runFakes(ctx, args[1:], stdout, stderr, getenv)
	case "keys":
		return runKeys(ctx, args[1:], stdout, stderr, getenv)
	case "streams", "backlog", "devices", "origins", "wakeups":
		return runCLI(ctx, args, stdout, stderr, getenv)
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, topUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "pushproxy: unknown command %q\n\n%s", args[0], topUsage)
		return 2
	}
}
