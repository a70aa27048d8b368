package pgtest

import (
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// DumpData returns what the real pg_dump --data-only writes for the database at url: every
// row, as a curious DBA or a leaked backup would see it. It uses the newest
// /usr/lib/postgresql/*/bin/pg_dump, else the one on PATH.
func DumpData(tb testing.TB, url string) []byte {
	tb.Helper()
	bin := "pg_dump"
	if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_dump"); len(m) > 0 {
		slices.Sort(m)
		bin = m[len(m)-1]
	}
	out, err := exec.Command(bin, "--data-only", "--dbname", url).Output()
	if err != nil {
		tb.Fatalf("pg_dump: %v", err)
	}
	return out
}
