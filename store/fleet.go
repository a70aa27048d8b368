package store

import (
	"context"
	"fmt"

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
