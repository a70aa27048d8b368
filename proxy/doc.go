// Package proxy is the engine of the push proxy: it holds upstream SSE streams (one holder
// per stream, over the clients of internal/upstream), commits their events to Postgres in
// batches fenced by leases, claims the streams no instance holds, and rings the readers of a
// stream (the hub) when its events land. The HTTP surface is package api, on top of it.
package proxy
