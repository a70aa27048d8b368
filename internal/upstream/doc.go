// Package upstream holds what the proxy needs to reach origins safely: the SSRF allow-list
// checked at dial time (AllowList), and the contract its upstream clients (h1client,
// h2client) share: a response body that is read without a goroutine waiting on it (Stream),
// and the few helpers both need.
package upstream
