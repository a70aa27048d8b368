package seal

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestSealOpen(t *testing.T) {
	k, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	ct, err := k.Seal([]byte("Bearer secret"), []byte("stream-1"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(ct, []byte("secret")) {
		t.Fatal("ciphertext holds the plaintext")
	}
	if id, ok := KeyID(ct); !ok || id != k.Primary() || !bytes.HasPrefix(ct, k.PrimaryPrefix()) {
		t.Fatalf("ciphertext prefix %x, want key id %d", ct[:PrefixSize], k.Primary())
	}
	pt, err := k.Open(ct, []byte("stream-1"))
	if err != nil || string(pt) != "Bearer secret" {
		t.Fatalf("open: %q, %v", pt, err)
	}
	// Bound to its row: another stream id does not open it.
	if _, err := k.Open(ct, []byte("stream-2")); !errors.Is(err, ErrNotAuthentic) {
		t.Fatalf("open under another id: %v", err)
	}
	damaged := bytes.Clone(ct)
	damaged[len(damaged)-1] ^= 1
	if _, err := k.Open(damaged, []byte("stream-1")); !errors.Is(err, ErrNotAuthentic) {
		t.Fatalf("open damaged: %v", err)
	}
	if _, err := k.Open([]byte("{}"), nil); !errors.Is(err, ErrNotAuthentic) {
		t.Fatalf("open plaintext: %v", err)
	}
	other, _ := Generate()
	if _, err := other.Open(ct, []byte("stream-1")); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("open with another key file: %v", err)
	}
}

func TestRotateKeys(t *testing.T) {
	k1, _ := Generate()
	old, _ := k1.Seal([]byte("v"), []byte("ad"))
	k2, err := k1.WithNewPrimary()
	if err != nil {
		t.Fatal(err)
	}
	if k2.Primary() == k1.Primary() || len(k2.IDs()) != 2 || len(k2.Prefixes()) != 2 {
		t.Fatalf("new primary %d, ids %v", k2.Primary(), k2.IDs())
	}
	if pt, err := k2.Open(old, []byte("ad")); err != nil || string(pt) != "v" {
		t.Fatalf("old ciphertext under the new set: %q, %v", pt, err)
	}
	ct, _ := k2.Seal([]byte("v"), []byte("ad"))
	if id, _ := KeyID(ct); id != k2.Primary() {
		t.Fatalf("sealed under %d, want the new primary %d", id, k2.Primary())
	}
	k3, err := k2.PrimaryOnly()
	if err != nil {
		t.Fatal(err)
	}
	if ids := k3.IDs(); len(ids) != 1 || ids[0] != k2.Primary() {
		t.Fatalf("after removing the old keys: %v", ids)
	}
	if _, err := k3.Open(old, []byte("ad")); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("old ciphertext after its key was removed: %v", err)
	}
	// The file round trip keeps ids and primary.
	b, err := k2.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	k4, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if k4.Primary() != k2.Primary() || len(k4.IDs()) != 2 {
		t.Fatalf("parsed: primary %d ids %v", k4.Primary(), k4.IDs())
	}
	if pt, err := k4.Open(old, []byte("ad")); err != nil || string(pt) != "v" {
		t.Fatalf("open after a file round trip: %v", err)
	}
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "secret-keys.json")
	if _, err := Load(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	// Processes starting together agree on one key.
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		created int
		ids     = map[uint32]bool{}
	)
	for range 8 {
		wg.Go(func() {
			k, c, err := LoadOrCreate(path)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			ids[k.Primary()] = true
			if c {
				created++
			}
		})
	}
	wg.Wait()
	if created != 1 || len(ids) != 1 {
		t.Fatalf("created %d times, %d different keys", created, len(ids))
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %04o, want 0600", fi.Mode().Perm())
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a world-readable key file: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("left temporary files: %v", entries)
	}
}

func TestParseRefuses(t *testing.T) {
	k, _ := Generate()
	good, _ := k.Marshal()
	for name, in := range map[string]string{
		"empty":      ``,
		"not json":   `key=abc`,
		"no keys":    `{"primaryKeyId": 1, "key": []}`,
		"no primary": strings.Replace(string(good), `"primaryKeyId":`, `"primaryKeyId":1`, 1),
		"disabled":   strings.Replace(string(good), `"ENABLED"`, `"DISABLED"`, 1),
		"raw prefix": strings.Replace(string(good), `"TINK"`, `"RAW"`, 1),
	} {
		if _, err := Parse([]byte(in)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

// BenchmarkSeal is the cost sealing adds to a handoff: a stream's headers and query, as the
// store seals them.
func BenchmarkSeal(b *testing.B) {
	k, _ := Generate()
	pt := []byte(`{"h":{"Authorization":"Bearer auth-secret-7f3a","Cookie":"session=cookie-secret-91bc","X-Api-Key":"apikey-secret-c0de"},"q":"key=query-secret-5e1f&room=42"}`)
	ad := []byte("0b7f9c1e-2d3a-4f5b-8c6d-7e8f9a0b1c2d")
	b.ReportAllocs()
	for b.Loop() {
		ct, _ := k.Seal(pt, ad)
		if _, err := k.Open(ct, ad); err != nil {
			b.Fatal(err)
		}
	}
}
