package wakeup

import (
	"errors"
	"net/url"
	"strings"
)

// TokenMask replaces a push token in the text of an error.
const TokenMask = "[push token]"

// The errors of a send end up in the wake-up history, on the device and its streams, in the
// admin API and in logs, none of which may show a push token. An APNs device token is in the
// request path (https://host/3/device/<token>), so net/http's *url.Error of a network
// failure names it; an FCM registration token is in the request body, which an error answer
// may quote. Every sender therefore hands back errors made by networkError and scrubToken.

// networkError describes a request that got no answer: *url.Error, whose text holds the
// request URL, is replaced by the method, the scheme and host of the URL, and the cause.
func networkError(prefix string, err error, token string) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		where := ue.Op
		if u, perr := url.Parse(ue.URL); perr == nil && u.Host != "" {
			where += " " + u.Scheme + "://" + u.Host
		}
		err = &scrubbedError{msg: where + ": " + ue.Err.Error(), orig: ue.Err}
	}
	return scrubToken(&scrubbedError{msg: prefix + err.Error(), orig: err}, token)
}

// scrubToken returns err with token masked in its text (in any letter case, and escaped as
// in a URL path or query). The result still matches the sentinel errors err matched
// (errors.Is), but errors.As cannot reach the errors below it, whose texts hold the token.
func scrubToken(err error, token string) error {
	if err == nil || token == "" {
		return err
	}
	msg := err.Error()
	clean := maskToken(msg, token)
	if clean == msg {
		return err
	}
	return &scrubbedError{msg: clean, orig: err}
}

// maskToken replaces every occurrence of token in s by TokenMask, ignoring the case of ASCII
// letters, and its URL-escaped forms.
func maskToken(s, token string) string {
	if token == "" {
		return s
	}
	for _, t := range []string{token, url.PathEscape(token), url.QueryEscape(token)} {
		s = replaceFold(s, t, TokenMask)
	}
	return s
}

// replaceFold is strings.ReplaceAll ignoring the case of ASCII letters.
func replaceFold(s, old, repl string) string {
	ls, lo := asciiLower(s), asciiLower(old)
	if !strings.Contains(ls, lo) {
		return s
	}
	var b strings.Builder
	for {
		i := strings.Index(ls, lo)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i])
		b.WriteString(repl)
		s, ls = s[i+len(old):], ls[i+len(old):]
	}
}

// asciiLower lowers ASCII letters only, byte by byte, so that byte offsets stay those of s.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// scrubbedError is an error whose text is msg: orig's text without secrets. It is orig for
// errors.Is but does not unwrap to it.
type scrubbedError struct {
	msg  string
	orig error
}

func (e *scrubbedError) Error() string        { return e.msg }
func (e *scrubbedError) Is(target error) bool { return errors.Is(e.orig, target) }
