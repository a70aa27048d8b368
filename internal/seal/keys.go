// Package seal keeps what a stream forwards to its origin (header values, the URL's query)
// encrypted at rest, with AES-256-GCM under the operator's keys.
//
// The keys are a Tink keyset (github.com/tink-crypto/tink-go), kept in a JSON file: each key
// has a numeric id, one is the primary that seals, all of them open. Every ciphertext starts
// with Tink's 5-byte prefix, 0x01 and the big-endian id of the key that sealed it, so a new key
// can be made primary while rows sealed under the old one still open, and a rotation can find
// the rows that are not under the primary yet.
package seal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// PrefixSize is the length of the prefix every ciphertext starts with.
const PrefixSize = 5

// tinkStartByte starts the prefix of a key with Tink's output prefix (the only kind kept).
const tinkStartByte = 0x01

// maxFileSize bounds a key file: a few hundred keys, far more than rotation ever keeps.
const maxFileSize = 1 << 20

// Keys is a set of AES-256-GCM keys, one of them primary. It is safe for concurrent use.
type Keys struct {
	h       *keyset.Handle
	aead    tink.AEAD
	primary uint32
	ids     []uint32 // ascending
}

// Generate returns a new set of one fresh primary key.
func Generate() (*Keys, error) {
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return fromHandle(h)
}

// Parse reads a key file's content: a Tink keyset in JSON, in clear, of enabled AES-256-GCM
// keys with Tink's output prefix.
func Parse(b []byte) (*Keys, error) {
	if len(b) > maxFileSize {
		return nil, errors.New("key file: larger than 1 MiB")
	}
	h, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(bytes.NewReader(b)))
	if err != nil {
		return nil, fmt.Errorf("key file: not a Tink JSON keyset: %w", err)
	}
	return fromHandle(h)
}

// Load reads the key file at path. It refuses a file that others than its owner may read.
func Load(path string) (*Keys, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("secret key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("secret key file %s: mode %04o lets others read it; chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("secret key file: %w", err)
	}
	k, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("secret key file %s: %w", path, err)
	}
	return k, nil
}

func fromHandle(h *keyset.Handle) (*Keys, error) {
	k := &Keys{h: h}
	for i := range h.Len() {
		e, err := h.Entry(i)
		if err != nil {
			return nil, fmt.Errorf("key file: %w", err)
		}
		gk, ok := e.Key().(*aesgcm.Key)
		if !ok {
			return nil, fmt.Errorf("key file: key %d is not an AES-GCM key", e.KeyID())
		}
		p := gk.Parameters().(*aesgcm.Parameters)
		if p.KeySizeInBytes() != 32 || p.Variant() != aesgcm.VariantTink {
			return nil, fmt.Errorf("key file: key %d must be AES-256-GCM with the TINK output prefix", e.KeyID())
		}
		if e.KeyStatus() != keyset.Enabled {
			return nil, fmt.Errorf("key file: key %d is not enabled; remove it or enable it", e.KeyID())
		}
		if slices.Contains(k.ids, e.KeyID()) {
			return nil, fmt.Errorf("key file: key id %d appears twice", e.KeyID())
		}
		k.ids = append(k.ids, e.KeyID())
		if e.IsPrimary() {
			k.primary = e.KeyID()
		}
	}
	if len(k.ids) == 0 {
		return nil, errors.New("key file: no keys")
	}
	if _, err := h.Primary(); err != nil {
		return nil, fmt.Errorf("key file: no primary key: %w", err)
	}
	slices.Sort(k.ids)
	a, err := aead.New(h)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	k.aead = a
	return k, nil
}

// Primary is the id of the key that seals.
func (k *Keys) Primary() uint32 { return k.primary }

// IDs are the ids of every key, ascending.
func (k *Keys) IDs() []uint32 { return slices.Clone(k.ids) }

// Prefix is the prefix of what the key with id seals.
func Prefix(id uint32) []byte {
	p := make([]byte, PrefixSize)
	p[0] = tinkStartByte
	binary.BigEndian.PutUint32(p[1:], id)
	return p
}

// PrimaryPrefix is the prefix every ciphertext sealed now starts with.
func (k *Keys) PrimaryPrefix() []byte { return Prefix(k.primary) }

// Prefixes are the prefixes of every key: the ciphertexts these keys can open.
func (k *Keys) Prefixes() [][]byte {
	out := make([][]byte, len(k.ids))
	for i, id := range k.ids {
		out[i] = Prefix(id)
	}
	return out
}

// KeyID returns the id of the key that sealed ciphertext, read from its prefix.
func KeyID(ciphertext []byte) (uint32, bool) {
	if len(ciphertext) < PrefixSize || ciphertext[0] != tinkStartByte {
		return 0, false
	}
	return binary.BigEndian.Uint32(ciphertext[1:PrefixSize]), true
}

// Seal encrypts plaintext under the primary key, bound to associatedData (which Open must be
// given again: a ciphertext moved to another row does not open).
func (k *Keys) Seal(plaintext, associatedData []byte) ([]byte, error) {
	ct, err := k.aead.Encrypt(plaintext, associatedData)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return ct, nil
}

// ErrUnknownKey is returned by Open for a ciphertext sealed under a key the set lacks.
var ErrUnknownKey = errors.New("sealed under a key the key file does not hold")

// ErrNotAuthentic is returned by Open for a ciphertext that does not authenticate under its
// key: the wrong key under a reused id, a damaged value, or one moved from another row.
var ErrNotAuthentic = errors.New("does not authenticate: wrong key, damaged, or moved from another row")

// Open decrypts a ciphertext that Seal made with any key of the set.
func (k *Keys) Open(ciphertext, associatedData []byte) ([]byte, error) {
	id, ok := KeyID(ciphertext)
	if !ok {
		return nil, fmt.Errorf("open: %w", ErrNotAuthentic)
	}
	if _, found := slices.BinarySearch(k.ids, id); !found {
		return nil, fmt.Errorf("open: key id %d: %w", id, ErrUnknownKey)
	}
	pt, err := k.aead.Decrypt(ciphertext, associatedData)
	if err != nil {
		return nil, fmt.Errorf("open: key id %d: %w", id, ErrNotAuthentic)
	}
	return pt, nil
}

// WithNewPrimary returns the set with a fresh key added as primary; the others stay, so what
// they sealed still opens until a rotation re-seals it.
func (k *Keys) WithNewPrimary() (*Keys, error) {
	m := keyset.NewManagerFromHandle(k.h)
	id, err := m.Add(aead.AES256GCMKeyTemplate())
	if err != nil {
		return nil, fmt.Errorf("add key: %w", err)
	}
	if err := m.SetPrimary(id); err != nil {
		return nil, fmt.Errorf("add key: %w", err)
	}
	h, err := m.Handle()
	if err != nil {
		return nil, fmt.Errorf("add key: %w", err)
	}
	return fromHandle(h)
}

// PrimaryOnly returns the set without its other keys (after a rotation re-sealed everything).
func (k *Keys) PrimaryOnly() (*Keys, error) {
	m := keyset.NewManagerFromHandle(k.h)
	for _, id := range k.ids {
		if id != k.primary {
			if err := m.Delete(id); err != nil {
				return nil, fmt.Errorf("remove key %d: %w", id, err)
			}
		}
	}
	h, err := m.Handle()
	if err != nil {
		return nil, fmt.Errorf("remove keys: %w", err)
	}
	return fromHandle(h)
}

// Marshal returns the key file's content.
func (k *Keys) Marshal() ([]byte, error) {
	var b bytes.Buffer
	if err := insecurecleartextkeyset.Write(k.h, keyset.NewJSONWriter(&b)); err != nil {
		return nil, fmt.Errorf("write keys: %w", err)
	}
	b.WriteByte('\n')
	return b.Bytes(), nil
}

// WriteFile writes the key file at path, mode 0600, atomically: a reader sees the old file or
// the new one, never a part.
func (k *Keys) WriteFile(path string) error {
	return k.writeFile(path, os.Rename)
}

// writeFile writes the content to a temporary file beside path and puts it in place with
// place (os.Rename replaces, os.Link refuses an existing file).
func (k *Keys) writeFile(path string, place func(tmp, path string) error) error {
	b, err := k.Marshal()
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write key file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a rename there is nothing left to remove; after a link, a name
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write key file: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write key file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write key file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write key file: %w", err)
	}
	if err := place(tmp, path); err != nil {
		return fmt.Errorf("write key file: %w", err)
	}
	return nil
}

// LoadOrCreate loads the key file at path, or creates it (mode 0600) with one fresh key when
// it does not exist. created tells which. Two processes starting together end up with the
// same keys: the file is created only if it still does not exist, and the loser loads it.
func LoadOrCreate(path string) (k *Keys, created bool, err error) {
	k, err = Load(path)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return k, false, err
	}
	if k, err = Generate(); err != nil {
		return nil, false, err
	}
	err = k.writeFile(path, os.Link)
	if errors.Is(err, os.ErrExist) {
		k, err = Load(path)
		return k, false, err
	}
	if err != nil {
		return nil, false, err
	}
	return k, true, nil
}
