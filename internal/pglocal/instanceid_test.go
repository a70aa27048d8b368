package pglocal

import (
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

func TestInstanceIDIsCreatedOnceAndKept(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), instanceIDFile)
	var made atomic.Int64
	newID := func() string { return "local-test-" + string(rune('a'+made.Add(1))) }

	// Instances starting together on one directory agree on one id.
	ids := make([]string, 8)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			id, err := loadOrCreateID(path, newID)
			if err != nil {
				t.Error(err)
			}
			ids[i] = id
		})
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] || !validID(id) {
			t.Fatalf("ids = %q, want one valid id", ids)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("id file mode %o, want 600", perm)
	}
	// A restart reads it back without making a new one.
	before := made.Load()
	id, err := loadOrCreateID(path, newID)
	if err != nil || id != ids[0] || made.Load() != before {
		t.Fatalf("after restart: %q, %v (ids made: %d, then %d); want %q", id, err, before, made.Load(), ids[0])
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want only the id file (no temporary file left)", len(entries))
	}
}

func TestInstanceIDFileThatIsNotAnIDIsRefused(t *testing.T) {
	t.Parallel()
	for _, content := range []string{"", "\n", "two words\n", string(make([]byte, 200))} {
		path := filepath.Join(t.TempDir(), instanceIDFile)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if id, err := loadOrCreateID(path, func() string { return "fresh" }); err == nil {
			t.Errorf("file %q: got id %q, want an error", content, id)
		}
	}
}

func TestCleanHost(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"": "", "web-1.example": "web-1.example-", "a b/c": "abc-"} {
		if got := cleanHost(in); got != want {
			t.Errorf("cleanHost(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestClusterKeepsItsInstanceIDAcrossRestarts starts a cluster in a data directory twice:
// the instance id is the same both times (as for `pushproxy serve` restarted after kill -9).
func TestClusterKeepsItsInstanceIDAcrossRestarts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	t.Parallel()
	dir := reachableDir(t)
	var ids []string
	for range 2 {
		c, err := Start(t.Context(), Options{DataDir: filepath.Join(dir, "pg"), Fast: true})
		if err != nil {
			t.Fatal(err)
		}
		id, err := c.InstanceID()
		if err := c.Stop(); err != nil {
			t.Fatal(err)
		}
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if ids[0] != ids[1] || !validID(ids[0]) {
		t.Fatalf("instance ids %q, want one kept id", ids)
	}
}
