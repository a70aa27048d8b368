package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// goTestJSON runs "go test -json" on packages of a module made of files, and returns its
// output.
func goTestJSON(t *testing.T, files map[string]string, pkgs ...string) []byte {
	t.Helper()
	dir := t.TempDir()
	files["go.mod"] = "module example.com/m\n\ngo 1.22\n"
	for name, body := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), append([]string{"test", "-json", "-count=1"}, pkgs...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false", "GOWORK=off")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Run() // its exit status is what summarize must work out from the events
	return out.Bytes()
}

var module = map[string]string{
	"pass/p_test.go": `package pass

import "testing"

func TestPass(t *testing.T) { t.Log("a passing test's log") }
func TestSkip(t *testing.T) { t.Skip("no nginx: install nginx-light") }
func TestSub(t *testing.T) {
	t.Run("bare", func(t *testing.T) { t.Skip() })
	t.Run("ok", func(t *testing.T) {})
}
`,
	"fail/f_test.go": `package fail

import "testing"

func TestFail(t *testing.T) { t.Log("what led to it"); t.Error("boom") }
func TestOther(t *testing.T) { t.Log("not shown") }
`,
	"broken/b_test.go": `package broken

import "testing"

func TestBroken(t *testing.T) { undefinedFunction() }
`,
	"notests/n.go": "package notests\n",
}

func TestSummarizeFailingRun(t *testing.T) {
	in := goTestJSON(t, module, "./...")
	var out bytes.Buffer
	if summarize(bytes.NewReader(in), &out) {
		t.Fatalf("a run with a failing test and a failing build passed:\n%s", out.String())
	}
	got := out.String()
	for _, want := range []string{
		"what led to it", "boom", "--- FAIL: TestFail", "FAIL\texample.com/m/fail",
		"undefined: undefinedFunction", "FAIL\texample.com/m/broken [build failed]",
		"ok  \texample.com/m/pass", "?   \texample.com/m/notests\t[no test files]",
		"\nSkipped (2 tests):\n",
		"\nexample.com/m/pass\n  TestSkip      p_test.go:6: no nginx: install nginx-light\n",
		"TestSub/bare  p_test.go:8: (no reason given)\n",
		"FAIL: 2 of 4 packages failed (1 builds failed)\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	for _, hidden := range []string{"a passing test's log", "not shown", "=== RUN", "\nPASS\n"} {
		if strings.Contains(got, hidden) {
			t.Errorf("output shows %q:\n%s", hidden, got)
		}
	}
	if i, j := strings.Index(got, "Skipped ("), strings.Index(got, "FAIL\texample.com/m/fail"); i < j {
		t.Errorf("the skipped tests are not at the end:\n%s", got)
	}
}

func TestSummarizePassingRun(t *testing.T) {
	in := goTestJSON(t, module, "./pass", "./notests")
	var out bytes.Buffer
	if !summarize(bytes.NewReader(in), &out) {
		t.Fatalf("a passing run failed:\n%s", out.String())
	}
	if got := out.String(); !strings.HasSuffix(got, "\nok: 2 packages, 2 tests skipped\n") || !strings.Contains(got, "no nginx: install nginx-light") {
		t.Errorf("output:\n%s", got)
	}
}

// TestSummarizeIncompleteRun: go test refused its arguments (no events), or was killed
// after a package started: either is a failure, whatever came before.
func TestSummarizeIncompleteRun(t *testing.T) {
	in := goTestJSON(t, module, "./pass")
	var cut []byte
	for _, line := range bytes.SplitAfter(in, []byte("\n")) {
		if bytes.Contains(line, []byte(`"Action":"pass","Package":"example.com/m/pass","Elapsed"`)) {
			break // the package's own result never comes
		}
		cut = append(cut, line...)
	}
	for name, in := range map[string][]byte{"nothing": nil, "killed": cut, "not json": []byte("go: something went wrong\n")} {
		var out bytes.Buffer
		if summarize(bytes.NewReader(in), &out) {
			t.Errorf("%s: passed:\n%s", name, out.String())
		}
	}
}

// TestSummarizeFailureWithoutAFailingTest: a package whose tests pass but which fails all the
// same (its TestMain exits 1 after them: a leak check, say) shows the last lines it printed,
// passing tests' included, rather than only its FAIL line.
func TestSummarizeFailureWithoutAFailingTest(t *testing.T) {
	in := goTestJSON(t, map[string]string{"leaky/l_test.go": `package leaky

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	m.Run()
	os.Exit(1)
}

func TestQuiet(t *testing.T) { t.Log("the last thing it did") }
`}, "./leaky")
	var out bytes.Buffer
	if summarize(bytes.NewReader(in), &out) {
		t.Fatalf("a failing package passed:\n%s", out.String())
	}
	for _, want := range []string{"FAIL\texample.com/m/leaky", "failed with no failing test", "the last thing it did"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
