package pushproxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Compaction of a backlog by key, as RFC 8030's Topic replaces a pending message: a queued
// event is replaced by a newer one with the same key. A stream's setting is one of:
//
//	""            no compaction
//	"type"        the key is the event type
//	"json:/ptr"   the key is the value at the JSON pointer /ptr (RFC 6901) in the event's
//	              data, as JSON text; events whose data is not JSON, or lacks the pointer,
//	              have no key and are never compacted
const (
	CompactByType       = "type"
	CompactByJSONPrefix = "json:"
)

// Bounds on a compaction setting and the keys it yields.
const (
	// MaxCompactByLength bounds the setting's text (the pointer, with its prefix).
	MaxCompactByLength = 256
	// maxPointerTokens bounds the depth a pointer reaches.
	maxPointerTokens = 32
	// maxKeyLength bounds a stored key; longer keys are stored as a digest of themselves.
	maxKeyLength = 128
)

// Compaction is a parsed compaction setting. The zero value compacts nothing.
type Compaction struct {
	by      string
	pointer []string // reference tokens, unescaped; nil with by "type" or ""
}

// ParseCompaction parses a stream's compaction setting (see CompactByType). Errors say what
// is wrong, for a client to read.
func ParseCompaction(by string) (Compaction, error) {
	switch {
	case by == "":
		return Compaction{}, nil
	case by == CompactByType:
		return Compaction{by: by}, nil
	case len(by) > MaxCompactByLength:
		return Compaction{}, fmt.Errorf("longer than %d bytes", MaxCompactByLength)
	case strings.HasPrefix(by, CompactByJSONPrefix):
		p, err := ParseJSONPointer(strings.TrimPrefix(by, CompactByJSONPrefix))
		if err != nil {
			return Compaction{}, err
		}
		return Compaction{by: by, pointer: p}, nil
	default:
		return Compaction{}, fmt.Errorf(`must be "type" or "json:" followed by a JSON pointer (RFC 6901), as in "json:/sym"`)
	}
}

// String is the setting as stored and shown ("" for none).
func (c Compaction) String() string { return c.by }

// Enabled reports whether the setting compacts anything.
func (c Compaction) Enabled() bool { return c.by != "" }

// ParseJSONPointer parses a JSON pointer (RFC 6901) into its unescaped reference tokens.
// The whole document ("") is refused: a key is a part of the data, not all of it.
func ParseJSONPointer(p string) ([]string, error) {
	switch {
	case p == "":
		return nil, errors.New(`the JSON pointer is empty; name a member, as in "/sym"`)
	case p[0] != '/':
		return nil, errors.New(`a JSON pointer starts with "/"`)
	case !utf8.ValidString(p):
		return nil, errors.New("the JSON pointer is not valid UTF-8")
	case len(p) > MaxCompactByLength:
		return nil, fmt.Errorf("the JSON pointer is longer than %d bytes", MaxCompactByLength)
	}
	raw := strings.Split(p[1:], "/")
	if len(raw) > maxPointerTokens {
		return nil, fmt.Errorf("the JSON pointer has more than %d reference tokens", maxPointerTokens)
	}
	tokens := make([]string, len(raw))
	for i, t := range raw {
		// "~" must be followed by "0" or "1" (RFC 6901 section 3); "~1" is "/", then "~0" "~".
		for j := 0; j < len(t); j++ {
			if t[j] == '~' && (j+1 == len(t) || (t[j+1] != '0' && t[j+1] != '1')) {
				return nil, errors.New(`in a JSON pointer "~" must be followed by "0" or "1"`)
			}
		}
		tokens[i] = strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~")
	}
	return tokens, nil
}

// Key returns the compaction key of an event of the given type and data, and whether it has
// one. Keys are compared byte for byte; one longer than maxKeyLength is replaced by its
// SHA-256 digest.
func (c Compaction) Key(typ, data string) (string, bool) {
	var key string
	switch {
	case c.by == "":
		return "", false
	case c.pointer == nil:
		key = typ
		if key == "" {
			key = "message" // the type an EventSource dispatches for events without one
		}
	default:
		v, ok := lookupJSON(data, c.pointer)
		if !ok {
			return "", false
		}
		key = v
	}
	if len(key) > maxKeyLength {
		sum := sha256.Sum256([]byte(key))
		key = "sha256:" + hex.EncodeToString(sum[:])
	}
	return key, true
}

// lookupJSON returns the value at pointer in data as canonical JSON text (object members
// sorted, insignificant space removed, numbers as written), or false if data is not one JSON
// value or the pointer does not resolve.
func lookupJSON(data string, pointer []string) (string, bool) {
	dec := json.NewDecoder(strings.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return "", false
	}
	if _, err := dec.Token(); err != io.EOF {
		return "", false
	}
	for _, tok := range pointer {
		switch x := v.(type) {
		case map[string]any:
			m, ok := x[tok]
			if !ok {
				return "", false
			}
			v = m
		case []any:
			i, ok := arrayIndex(tok)
			if !ok || i >= len(x) {
				return "", false
			}
			v = x[i]
		default:
			return "", false
		}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", false
	}
	return strings.TrimSuffix(b.String(), "\n"), true
}

// arrayIndex parses an RFC 6901 array index: "0", or digits without a leading zero.
func arrayIndex(tok string) (int, bool) {
	if tok == "" || len(tok) > 9 || (len(tok) > 1 && tok[0] == '0') {
		return 0, false
	}
	n := 0
	for i := 0; i < len(tok); i++ {
		if tok[i] < '0' || tok[i] > '9' {
			return 0, false
		}
		n = n*10 + int(tok[i]-'0')
	}
	return n, true
}
