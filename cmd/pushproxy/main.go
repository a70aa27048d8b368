// Command pushproxy is the push proxy for Server-Sent Events, and its operator tools.
// "pushproxy --help" lists the commands, "pushproxy <command> --help" a command's flags.
//
//	pushproxy serve     run the proxy (with a local Postgres when no database URL is given)
//	pushproxy migrate   apply database migrations, or show their status
//	pushproxy demo      run the whole flow on this machine and print a timeline
//	pushproxy fakes     run a fake APNs and a fake FCM, for integrating apps
//	pushproxy keys      generate and rotate the keys sealing forwarded credentials
//	pushproxy streams, backlog, devices, origins, wakeups
//	                    look at a running instance through its admin API
//	pushproxy version   print the version and the VCS revision it was built from
//
// Exit status: 0 on success (and after --help), 1 when the command failed, 2 on a usage
// error (an unknown command or flag, a bad value, a missing argument).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/pushproxy/pushproxy/internal/envflag"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// command is one command of the command line: "serve", or "streams list".
type command struct {
	name    string
	args    string // the synopsis of its positional arguments, "" when it takes none
	summary string // one line
	about   string // what --help says under the synopsis (default: summary)
	// prefix is the environment prefix of its flags (default envPrefix).
	prefix string
	// nargs checks the positional arguments (nil: none taken).
	nargs func(args []string) error
	// setup declares the command's flags on fs and returns the function that runs it, once
	// they are parsed, with its positional arguments.
	setup func(fs *flag.FlagSet) runFunc
}

type runFunc func(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int

// group is a word that groups commands ("streams" groups "streams list", "streams show"...).
type group struct{ name, summary string }

// commands is the command line: each command, in the order --help lists them.
func commands() []command {
	cs := []command{serveCommand(), migrateCommand(), demoCommand(), fakesCommand()}
	cs = append(cs, keysCommands()...)
	cs = append(cs, operatorCommands()...)
	return append(cs, versionCommand())
}

// groups are the operator commands' first words, with what --help says of each.
var groups = []group{
	{"keys", "make and rotate the keys sealing forwarded credentials (generate | rotate)"},
	{"streams", "list, show or close streams (list | show ID | close ID)"},
	{"backlog", "the largest backlogs, and the totals (top | totals)"},
	{"devices", "a device and its wake-ups, or the devices whose token died (show ID | dead)"},
	{"origins", "the origin hosts with failed or disconnected streams (failing)"},
	{"wakeups", "the latest wake-ups of all devices, with their outcomes (recent)"},
}

func topUsage() string {
	var b strings.Builder
	b.WriteString(`pushproxy: a push proxy for Server-Sent Events. It holds the streams of devices that sleep,
queues their events in Postgres, and wakes the devices with a silent push.

Usage: pushproxy <command> [arguments] [flags]

Commands:
`)
	line := func(name, summary string) { fmt.Fprintf(&b, "  %-9s %s\n", name, summary) }
	grouped := false
	for _, c := range commands() {
		if !strings.Contains(c.name, " ") {
			line(c.name, c.summary)
		} else if !grouped {
			for _, g := range groups {
				line(g.name, g.summary)
			}
			grouped = true
		}
	}
	line("help", `this help; "pushproxy help <command>" is "pushproxy <command> --help"`)
	b.WriteString(`
The operator commands (streams, backlog, devices, origins, wakeups) talk to a running
instance's admin API. Every flag can also be set with its environment variable: PUSHPROXY_
and the flag name in upper snake case (--listen is PUSHPROXY_LISTEN); the demo's own are
PUSHPROXY_DEMO_ (--sleep is PUSHPROXY_DEMO_SLEEP). A flag on the command line wins.
Exit status: 0 on success, 1 when the command failed, 2 on a usage error.
`)
	return b.String()
}

func isHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--help", "help":
		return true
	}
	return false
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, topUsage())
		return exitUsage
	}
	if isHelp(args[0]) {
		if len(args) > 1 && args[0] == "help" {
			// "pushproxy help serve" is "pushproxy serve --help".
			return run(ctx, append(args[1:len(args):len(args)], "--help"), stdout, stderr, getenv)
		}
		fmt.Fprint(stdout, topUsage())
		return exitOK
	}
	if args[0] == "--version" || args[0] == "-version" {
		args = append([]string{"version"}, args[1:]...)
	}
	cs := commands()
	for _, c := range cs {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr, getenv)
		}
	}
	for _, g := range groups {
		if g.name == args[0] {
			return runGroup(ctx, g, cs, args[1:], stdout, stderr, getenv)
		}
	}
	names := make([]string, 0, len(cs)+len(groups))
	for _, c := range cs {
		names = append(names, c.name)
	}
	for _, g := range groups {
		names = append(names, g.name)
	}
	usageError(stderr, "", fmt.Errorf("unknown command %q%s", args[0], didYouMean(args[0], names)), "pushproxy --help")
	return exitUsage
}

// runGroup runs "<group> <name> ...", or prints the group's commands.
func runGroup(ctx context.Context, g group, cs []command, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	var in []command
	var names []string
	for _, c := range cs {
		if name, ok := strings.CutPrefix(c.name, g.name+" "); ok {
			in, names = append(in, c), append(names, name)
		}
	}
	if len(args) == 0 || isHelp(args[0]) {
		w := stdout
		if len(args) == 0 {
			w = stderr
		}
		fmt.Fprintf(w, "Usage: pushproxy %s <command> [arguments] [flags]\n\n%s.\n\nCommands:\n", g.name, upperFirst(g.summary))
		width := 0
		for _, c := range in {
			width = max(width, len(c.name+" "+c.args))
		}
		for _, c := range in {
			fmt.Fprintf(w, "  %-*s  %s\n", width, strings.TrimSpace(c.name+" "+c.args), c.summary)
		}
		fmt.Fprintf(w, "\nRun \"pushproxy %s <command> --help\" for a command's flags.\n", g.name)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range in {
		if c.name == g.name+" "+args[0] {
			return c.run(ctx, args[1:], stdout, stderr, getenv)
		}
	}
	usageError(stderr, "", fmt.Errorf("unknown command %q%s", g.name+" "+args[0], didYouMean(args[0], names)), "pushproxy "+g.name+" --help")
	return exitUsage
}

// run parses the command's flags and positional arguments, and runs it. --help prints its
// usage on stdout; a usage error is one line on stderr.
func (c command) run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs, do := c.flagSet(stdout)
	rest, err := envflag.ParsePositional(fs, c.envPrefix(), args, getenv)
	if err == flag.ErrHelp {
		return exitOK
	}
	if err == nil {
		if c.nargs != nil {
			err = c.nargs(rest)
		} else if len(rest) > 0 {
			err = fmt.Errorf("unexpected argument %q", rest[0])
		}
	}
	if err != nil {
		usageError(stderr, c.name, err, "pushproxy "+c.name+" --help")
		return exitUsage
	}
	return do(ctx, rest, stdout, stderr, getenv)
}

// flagSet returns the command's flags, with a usage that prints on w, and its runner.
func (c command) flagSet(w io.Writer) (*flag.FlagSet, runFunc) {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	do := c.setup(fs)
	about := c.about
	if about == "" {
		about = upperFirst(c.summary) + "."
	}
	flags := ""
	fs.VisitAll(func(*flag.Flag) { flags = " [flags]" })
	synopsis := fmt.Sprintf("Usage: pushproxy %s%s\n\n%s", strings.TrimSpace(c.name+" "+c.args), flags, about)
	fs.Usage = envflag.Usage(fs, c.envPrefix(), w, synopsis)
	return fs, do
}

func (c command) envPrefix() string {
	if c.prefix != "" {
		return c.prefix
	}
	return envPrefix
}

// usageError prints a usage error as one line: what is wrong, and where to look.
func usageError(stderr io.Writer, name string, err error, help string) {
	who := "pushproxy"
	if name != "" {
		who += " " + name
	}
	fmt.Fprintf(stderr, "%s: %v; see %q\n", who, err, help)
}

func didYouMean(name string, names []string) string {
	if s := envflag.Suggest(name, names); s != "" {
		return fmt.Sprintf(" (did you mean %q?)", s)
	}
	return ""
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
