// Package store is pushproxy's Postgres persistence, on pgx v5.
//
// Postgres is the only stateful dependency and the coordinator between instances:
//   - streams are held under leases with a fencing epoch (ClaimStreams, RenewLeases); every
//     write a holder makes names the epoch it claimed with, so a holder that lost its lease
//     changes nothing;
//   - events are appended in batches by Commit, together with each stream's upstream resume
//     point, in one transaction: after a crash the proxy resumes exactly where the last commit
//     ended;
//   - commits notify the "pushproxy_events" channel (LISTEN/NOTIFY), so readers on any
//     instance see new events at once;
//   - open readers are rows with an expiry (OpenReader, RefreshReaders), so any instance can
//     tell whether a device is awake.
//
// No session holds locks longer than a lease: every pool session has a statement timeout and
// an idle-in-transaction timeout below the lease TTL (Options), and requests that lock a
// stream's row wait for it at most the lock timeout. Errors of a database that cannot serve
// now (unreachable, restarting, a timeout) come out of every method as
// pushproxy.EUNAVAILABLE, with the cause in the chain.
//
// Migrations declare which older code still runs on the schema they produce, so that the
// instances of a previous release keep running through a rolling upgrade (Migrate,
// CheckSchema; see package migrations).
//
// Public methods own their transaction. Event ids, types and data are stored as bytea, so
// they come back byte-exact (U+0000 included).
package store
