package pglocal

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// instanceIDFile is where, in the data directory, InstanceID keeps the id.
const instanceIDFile = "pushproxy-instance-id"

// InstanceID returns the name under which the one pushproxy instance running on this cluster
// holds its leases, kept in the data directory: created on the first call, read back on
// every later one. A restart after a crash (kill -9) so comes back under the same name and
// takes its leases back at once instead of waiting for them to lapse. Only one server runs on
// a data directory at a time (Postgres locks it), so only one instance uses the name.
func (c *Cluster) InstanceID() (string, error) {
	host, _ := os.Hostname()
	return loadOrCreateID(filepath.Join(c.dir, instanceIDFile), func() string {
		var b [6]byte
		_, _ = rand.Read(b[:])
		return "local-" + cleanHost(host) + hex.EncodeToString(b[:])
	})
}

// loadOrCreateID returns the id in the file at path, creating the file (0600) with newID()
// when there is none. Concurrent callers get the same id: the file appears complete or not
// at all (written aside, then linked in place, which fails if another got there first).
func loadOrCreateID(path string, newID func() string) (string, error) {
	for range 2 {
		b, err := os.ReadFile(path)
		if err == nil {
			id := strings.TrimSpace(string(b))
			if !validID(id) {
				return "", fmt.Errorf("pglocal: %s does not hold an instance id (1 to 128 printable ASCII characters); remove it to get a new one", path)
			}
			return id, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("pglocal: read instance id: %w", err)
		}
		id := newID()
		if err := linkNew(path, []byte(id+"\n")); err != nil && !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("pglocal: keep instance id: %w", err)
		}
		// Created, or another process created it first: read what is there.
	}
	return "", fmt.Errorf("pglocal: %s vanished while being created", path)
}

// linkNew creates the file at path with content, atomically, failing with os.ErrExist if
// it is there already.
func linkNew(path string, content []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".instance-id-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(content); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	// CreateTemp made it 0600.
	return os.Link(tmp.Name(), path)
}

func validID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := range len(id) {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}

// cleanHost keeps the letters, digits, dots and dashes of a host name, with a dash after it.
func cleanHost(h string) string {
	h = strings.Map(func(r rune) rune {
		if r == '.' || r == '-' || '0' <= r && r <= '9' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' {
			return r
		}
		return -1
	}, h)
	if len(h) > 64 {
		h = h[:64]
	}
	if h == "" {
		return ""
	}
	return h + "-"
}
