// Command testsummary reads the output of "go test -json" and prints what go test prints (a
// line per package, and the output of failing tests and builds), then which tests were
// skipped and why. go test itself shows skip reasons only with -v, and in package-list mode
// hides the output of passing packages, so a skipped test (no Chromium, no nginx...) goes
// unnoticed; this makes it the last thing a run prints.
//
//	go test -race -json ./... | go run ./internal/testsummary
//
// It exits 1 when a test or a build failed, when a package started but never reported a
// result (go test was killed), or when it read no test result at all (go test refused its
// arguments: its own error is on stderr); else 0.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
)

func main() {
	if !summarize(os.Stdin, os.Stdout) {
		os.Exit(1)
	}
}

// event is one line of "go test -json" (see "go doc cmd/test2json"), and of its build
// events ("go help buildjson").
type event struct {
	Action      string
	Package     string
	Test        string
	Output      string
	FailedBuild string
	ImportPath  string
}

// skipped is a skipped test and its reason.
type skipped struct{ pkg, test, reason string }

type key struct{ pkg, test string }

// tailLines is how many of a package's last output lines are kept, to show when it fails with
// no failing test.
const tailLines = 60

// summarize copies the run in r to w as go test would print it, then the skipped tests, and
// reports whether everything passed.
func summarize(r io.Reader, w io.Writer) bool {
	output := map[key][]string{}    // the output of tests still running
	tails := map[string][]string{}  // the last lines of each package's output, whatever test
	failedTests := map[string]int{} // the failed tests of each package
	started := map[string]bool{}    // packages without a result yet
	var skips []skipped             // in the order the packages were started
	order := map[string]int{}
	packages, failed, builds := 0, 0, 0
	flush := func(k key) {
		for _, line := range output[k] {
			if !strings.HasPrefix(line, "=== ") {
				io.WriteString(w, line)
			}
		}
		delete(output, k)
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || e.Action == "" {
			fmt.Fprintln(w, sc.Text()) // not an event: pass it on
			continue
		}
		k := key{e.Package, e.Test}
		if e.Action == "output" {
			t := append(tails[e.Package], e.Output)
			tails[e.Package] = t[max(0, len(t)-tailLines):]
		}
		switch {
		case e.Action == "build-output":
			io.WriteString(w, e.Output)
		case e.Action == "build-fail":
			builds++
		case e.Action == "start":
			started[e.Package] = true
			order[e.Package] = len(order)
		case e.Action == "output" && e.Test == "":
			if e.Output != "PASS\n" {
				io.WriteString(w, e.Output)
			}
		case e.Action == "output":
			output[k] = append(output[k], e.Output)
		case e.Test != "" && e.Action == "fail":
			failedTests[e.Package]++
			flush(k)
		case e.Test != "" && e.Action == "skip":
			skips = append(skips, skipped{e.Package, e.Test, skipReason(output[k])})
			delete(output, k)
		case e.Test != "" && (e.Action == "pass" || e.Action == "bench"):
			delete(output, k)
		case e.Test == "" && (e.Action == "pass" || e.Action == "fail" || e.Action == "skip"):
			delete(started, e.Package)
			packages++
			if e.Action == "fail" {
				failed++
				for k := range output {
					if k.pkg == e.Package {
						flush(k) // tests that never finished: a panic or a timeout
					}
				}
				if failedTests[e.Package] == 0 {
					// Failed with no failing test (TestMain, a leak check, a binary killed):
					// what it printed last, passing tests' lines included.
					fmt.Fprintf(w, "(%s failed with no failing test; the last %d lines of its output:)\n", e.Package, len(tails[e.Package]))
					for _, line := range tails[e.Package] {
						io.WriteString(w, "    "+line)
					}
				}
			}
			delete(tails, e.Package)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(w, "testsummary: reading go test's output:", err)
		return false
	}

	// Packages run in parallel: their skips interleave.
	slices.SortStableFunc(skips, func(a, b skipped) int { return order[a.pkg] - order[b.pkg] })
	if len(skips) > 0 {
		fmt.Fprintf(w, "\nSkipped (%s):\n", plural(len(skips), "test"))
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for i, s := range skips {
			if i == 0 || s.pkg != skips[i-1].pkg {
				tw.Flush() // each package's tests aligned on their own
				fmt.Fprintln(w, s.pkg)
			}
			fmt.Fprintf(tw, "  %s\t%s\n", s.test, s.reason)
		}
		tw.Flush()
	}
	ok := failed == 0 && builds == 0 && len(started) == 0 && packages > 0
	switch {
	case packages == 0 && len(started) == 0:
		fmt.Fprintln(w, "testsummary: no test results (see go test's errors above)")
	case ok:
		fmt.Fprintf(w, "\nok: %s, %s skipped\n", plural(packages, "package"), plural(len(skips), "test"))
	default:
		fmt.Fprintf(w, "\nFAIL: %d of %d packages failed", failed, packages+len(started))
		if builds > 0 {
			fmt.Fprintf(w, " (%d builds failed)", builds)
		}
		if len(started) > 0 {
			fmt.Fprintf(w, "; %d started but reported no result", len(started))
		}
		fmt.Fprintln(w)
	}
	return ok
}

// skipReason is what a skipped test printed: its t.Skip message with the file and line
// ("nginx_test.go:39: no nginx: ..."), without the framing lines.
func skipReason(lines []string) string {
	var parts []string
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "=== ") || strings.HasPrefix(l, "--- SKIP") {
			continue
		}
		if strings.HasSuffix(l, ":") {
			l += " (no reason given)" // t.Skip() without arguments: only the place is known
		}
		parts = append(parts, l)
	}
	if len(parts) == 0 {
		return "(no reason given)"
	}
	return strings.Join(parts, " / ")
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
