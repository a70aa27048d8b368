// Package api is the proxy's HTTP surface, on top of the engine in package proxy: the device
// API (hand off a stream, read its state, fetch its events as an EventSource stream or as JSON
// pages, take it back), the admin API, and the dashboard with its live feed. Errors are RFC
// 9457 problem documents whose type a client can branch on (ProblemTypePrefix).
//
// A Server holds no stream: it asks the proxy.Service to hold, close and watch streams, and
// reads and writes the rest through the store.
package api
