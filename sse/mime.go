package sse

import "strings"

// IsEventStream reports whether a Content-Type header value names the
// text/event-stream MIME type, which is what a client must check before
// interpreting a response as an event stream (a browser fails the
// connection otherwise).
//
// It follows the WHATWG Fetch "extract a MIME type" and MIME Sniffing "parse
// a MIME type" algorithms: the value may be a comma-separated list (the last
// valid MIME type counts), the type and subtype are compared ASCII
// case-insensitively, and parameters are ignored — including charset, since
// an event stream is always UTF-8. So "text/event-stream;",
// "Text/Event-Stream; charset=windows-1252" are accepted and "text/plain",
// "text/x-bogus", "x bogus" and "" are not.
func IsEventStream(contentType string) bool {
	essence := ""
	for _, v := range splitHeader(contentType) {
		if e, ok := mimeEssence(v); ok && e != "*/*" {
			essence = e
		}
	}
	return strings.EqualFold(essence, "text/event-stream")
}

// splitHeader splits a header value at commas outside quoted strings, as
// Fetch's "get, decode, and split" does.
func splitHeader(v string) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == ',':
			out = append(out, v[start:i])
			start = i + 1
		}
	}
	return append(out, v[start:])
}

// mimeEssence parses the type and subtype of a MIME type, returning
// "type/subtype" and whether they are both non-empty HTTP tokens.
func mimeEssence(v string) (string, bool) {
	v = strings.Trim(v, " \t\r\n")
	slash := strings.IndexByte(v, '/')
	if slash < 0 {
		return "", false
	}
	typ, rest := v[:slash], v[slash+1:]
	sub := rest
	if i := strings.IndexByte(rest, ';'); i >= 0 {
		sub = rest[:i]
	}
	sub = strings.TrimRight(sub, " \t\r\n")
	if !isToken(typ) || !isToken(sub) {
		return "", false
	}
	return v[:slash+1+len(sub)], true
}

// isToken reports whether s is a non-empty run of HTTP token code points.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
