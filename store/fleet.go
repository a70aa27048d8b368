package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ClaimNote is the payload of the notification on EventsChannel that HandOver sends: streams
// were released for another instance to claim now rather than at its next claim interval. It
// is no stream id, so readers never mistake it for one.
const ClaimNote = "!claim"

// Load is how much work the fleet shares, for an instance to compute its fair share.
type Load struct {
	Alive int   // instances whose lease is fresh
	Held  int64 // streams in state held, owned or not
}

// FleetLoad counts the live instances and the held streams.
func (s *Store) FleetLoad(ctx context.Context) (Load, error) {
	var l Load
	err := s.pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM instances WHERE expires_at > now()),
			(SELECT count(*) FROM streams WHERE state = 'held')`).Scan(&l.Alive, &l.Held)
	if err != nil {
		return l, fmt.Errorf("fleet load: %w", err)
	}
	return l, nil
}

// HandOver gives up owner's leases of the given streams and tells the other instances
// (ClaimNote) to claim them at once. The caller has stopped their holders and committed what
// they read: the next holder resumes from that point, under a new lease epoch that fences off
// anything the old one still sends.
func (s *Store) HandOver(ctx context.Context, owner string, ids []string) (int, error) {
	var n int
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `
			UPDATE streams SET lease_owner = NULL, connected = false
			WHERE lease_owner = $1 AND id = ANY($2::uuid[]) AND state = 'held'`, owner, ids)
		if err != nil {
			return err
		}
		if n = int(tag.RowsAffected()); n > 0 {
			_, err = tx.Exec(ctx, `SELECT pg_notify($1, $2)`, EventsChannel, ClaimNote)
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("hand over streams: %w", err)
	}
	return n, nil
}

// ReleaseOwnerless releases the leases of held streams whose owner has no instance row at
// all (its row was deleted by ReleaseLeases while a handoff naming it as owner committed),
// which ClaimStreams would otherwise never take. Rows another session has locked are left
// for the next call.
func (s *Store) ReleaseOwnerless(ctx context.Context) (int64, error) {
	rows, err := s.pool.Query(ctx, ownerlessSQL)
	if err != nil {
		return 0, fmt.Errorf("release ownerless leases: %w", err)
	}
	owners, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(owners) == 0 {
		return 0, err
	}
	// The instance row is looked for again: the owner may have renewed since.
	tag, err := s.pool.Exec(ctx, `
		UPDATE streams s SET lease_owner = NULL, connected = false
		WHERE s.id = ANY (ARRAY(
			SELECT c.id FROM streams c
			WHERE c.state = 'held' AND c.lease_owner = ANY ($1::text[])
				AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = c.lease_owner)
			FOR UPDATE SKIP LOCKED))`, owners)
	if err != nil {
		return 0, fmt.Errorf("release ownerless leases: %w", err)
	}
	return tag.RowsAffected(), nil
}

// ownerlessSQL finds the owners of held streams that have no instance row (almost always
// none): the distinct owners, one probe of streams_lease_owner each (a loose index scan; a
// handful of owners, where the held streams are many), without the instances.
const ownerlessSQL = `
	WITH RECURSIVE owners (id) AS (
		(SELECT lease_owner FROM streams WHERE state = 'held' AND lease_owner IS NOT NULL
			ORDER BY lease_owner LIMIT 1)
		UNION ALL
		SELECT (SELECT c.lease_owner FROM streams c WHERE c.state = 'held' AND c.lease_owner > o.id
			ORDER BY c.lease_owner LIMIT 1)
		FROM owners o WHERE o.id IS NOT NULL
	)
	SELECT o.id FROM owners o WHERE o.id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = o.id)`

// NotifyClaim tells the other instances (ClaimNote) that streams were released, so that they
// claim them now rather than at their next claim interval.
func (s *Store) NotifyClaim(ctx context.Context) error {
	if _, err := s.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, EventsChannel, ClaimNote); err != nil {
		return fmt.Errorf("notify claim: %w", err)
	}
	return nil
}

// SessionName is the application_name of the database sessions of the instance id
// (Options.InstanceID): "pushproxy <id>", or, for an id that Postgres would not keep as it
// is (longer than its 63 bytes, or other than printable ASCII), "pushproxy ~" and the
// start of the id's SHA-256 in hex.
func SessionName(id string) string {
	name := "pushproxy " + id
	plain := len(name) <= 63
	for i := 0; plain && i < len(id); i++ {
		plain = id[i] >= 0x20 && id[i] < 0x7f
	}
	if plain {
		return name
	}
	sum := sha256.Sum256([]byte(id))
	return "pushproxy ~" + hex.EncodeToString(sum[:16])
}

// EndStuckSessions ends (pg_terminate_backend) the database sessions of pushproxy instances
// (found by their names, SessionName of the ids in instances) that are stuck: inside a
// transaction and waiting for their client (wait_event_type Client: idle in the
// transaction, a COPY waiting for its data, notifications the client does not read), and
// either of an instance whose lease lapsed (but self, the caller's own), or in that state,
// unchanged, for longer than stuck. It returns how many it ended.
//
// An instance frozen (SIGSTOP, a paused VM) while its commit copies events (COPY FROM
// STDIN, for commits of more than insertMaxEvents) holds the rows of the streams it commits
// for as long as it stays frozen: a session waiting for a COPY's data is not idle in its
// transaction, and a statement's timeout is not acted on until data arrives. Those streams
// cannot be claimed meanwhile (ClaimStreams skips locked rows). Ending the session is what
// releases them; an instance whose lease lapsed has lost its streams' leases anyway, and
// what it commits late is fenced off by their epochs. The duration covers an earlier process
// frozen under an id that a new process renews (stuck should be at least the lease TTL,
// which bounds the instances' own statement and idle timeouts).
//
// Ending another session and seeing whether it is in a transaction needs the same role as it
// (the instances share one), or pg_signal_backend and pg_read_all_stats; a superuser's
// sessions are left alone by a role that is not one.
func (s *Store) EndStuckSessions(ctx context.Context, self string, stuck time.Duration) (int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT id FROM instances`)
	if err != nil {
		return 0, fmt.Errorf("end stuck sessions: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(ids) == 0 {
		return 0, err
	}
	names := make([]string, len(ids))
	for i, id := range ids {
		names[i] = SessionName(id)
	}
	var n int64
	err = s.pool.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE pg_terminate_backend(a.pid))
		FROM unnest($1::text[], $2::text[]) AS l(id, name)
		JOIN instances i ON i.id = l.id
		JOIN pg_stat_activity a ON a.application_name = l.name
		WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
			AND a.xact_start IS NOT NULL AND a.wait_event_type = 'Client'
			AND ((i.expires_at < now() AND i.id <> $3) OR a.state_change < now() - $4::interval)
			AND (NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.oid = a.usesysid)
				OR (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user))`, ids, names, self, stuck).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("end stuck sessions: %w", err)
	}
	return n, nil
}
