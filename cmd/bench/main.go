// Command bench measures pushproxy's data path on this machine. Its results and method are
// written down in BENCHMARKS.md.
//
//	go run ./cmd/bench ingest [flags]   events/s from upstreams committed to Postgres
//	go run ./cmd/bench held [flags]     proxy RSS per idle held stream, HTTP/1.1 or HTTP/2
//	go run ./cmd/bench wakelatency      commit of an event to its wake-up push leaving, debounce 0
//	go run ./cmd/bench wakeburst        wake-ups dispatched per second from the outbox to the fake APNs
//	go run ./cmd/bench takeover         takeover time and connect rate after an instance holding every stream dies
//	go run ./cmd/bench rebalance        time for a joining instance to reach its share; events lost or doubled
//	go run ./cmd/bench serve            backlog read rate (JSON pages, SSE) against psql COPY; small reads under ingest
//	go run ./cmd/bench live             origin write to open SSE reader latency, many readers (--broadcast)
//	go run ./cmd/bench handoff          handoffs/s through the real server, sealing and limits on against off
//	go run ./cmd/bench soak             storage, dead tuples, commit latency and scrape time over a long run with churn
//
// Both start a private PostgreSQL with durable settings (fsync and synchronous_commit on),
// unless --database-url is given.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: bench ingest|held|wakelatency|wakeburst|takeover|rebalance|serve|live|handoff|soak [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "ingest":
		err = runIngest(ctx, os.Args[2:])
	case "held":
		err = runHeld(ctx, os.Args[2:])
	case "wakelatency":
		err = runWakeLatency(ctx, os.Args[2:])
	case "wakeburst":
		err = runWakeBurst(ctx, os.Args[2:])
	case "takeover":
		err = runTakeover(ctx, os.Args[2:])
	case "rebalance":
		err = runRebalance(ctx, os.Args[2:])
	case "serve":
		err = runServe(ctx, os.Args[2:])
	case "live":
		err = runLive(ctx, os.Args[2:])
	case "handoff":
		err = runHandoff(ctx, os.Args[2:])
	case "soak":
		err = runSoak(ctx, os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, "usage: bench ingest|held|wakelatency|wakeburst|takeover|rebalance|serve|live|handoff|soak [flags]")
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
