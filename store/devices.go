package store

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pushproxy/pushproxy"
)

// Advisory lock classes (the first key of pg_advisory_xact_lock(int, int)), so that the
// store's locks never meet another's.
const (
	_                = 0x70700001 // was: streams held per API key (now counted in api_key_streams)
	lockClassReaders = 0x70700002 // open readers per stream
)

// handoffDevice finds or creates the device of a handoff's push address, inside the
// handoff's transaction, and returns its id. The row is locked until the transaction ends,
// so concurrent handoffs for one device are decided one after the other.
//
// A device's attributes (topic, environment) are fixed by its first handoff, which stores
// ns.DeviceSecretHash. A later handoff for the same push token must present the same secret
// (ns.DeviceSecretGiven): with it, the handoff may change the attributes and revives a
// device reported dead; without it, or with another, it is refused and the row is left
// unchanged. Devices without a secret (created before secrets existed, or by callers that
// give none) take the first secret presented, provided the attributes stay what they were
// and the device is not dead.
//
// A Web Push device's subscription keys (wp, from webpushColumns) are stored with it and
// replaced by a handoff that proves the secret.
func handoffDevice(ctx context.Context, tx pgx.Tx, ns *NewStream, wp webpushColumns) (string, error) {
	p := ns.Push
	var secret []byte
	if len(ns.DeviceSecretHash) > 0 {
		secret = ns.DeviceSecretHash
	}
	var id string
	err := tx.QueryRow(ctx, `
		INSERT INTO devices (platform, token, topic, environment, secret_hash, webpush_p256dh, webpush_auth, webpush_auth_sealed)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (platform, token) DO NOTHING
		RETURNING id`, p.Platform, p.Token, p.Topic, p.Environment, secret, wp.P256dh, wp.Auth, wp.AuthSealed).Scan(&id)
	if err == nil {
		return id, nil // a new device: its attributes and secret are the handoff's
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("insert device: %w", err)
	}
	var (
		topic, env, p256dh string
		stored             []byte
		dead               bool
	)
	err = tx.QueryRow(ctx, `
		SELECT id, topic, environment, coalesce(webpush_p256dh, ''), secret_hash, dead_at IS NOT NULL FROM devices
		WHERE platform = $1 AND token = $2 FOR UPDATE`, p.Platform, p.Token).Scan(&id, &topic, &env, &p256dh, &stored, &dead)
	if errors.Is(err, pgx.ErrNoRows) {
		// Forgotten between the insert and the select (an operator's DELETE): the caller
		// may retry; it is rare enough to answer as a conflict.
		return "", pushproxy.Errorf(pushproxy.ECONFLICT, "the device changed during the handoff; try again")
	}
	if err != nil {
		return "", fmt.Errorf("lock device: %w", err)
	}
	same := topic == p.Topic && env == p.Environment && (wp.P256dh == nil || p256dh == *wp.P256dh)
	if stored == nil {
		// A device without a secret of its own: it takes the first one presented, but
		// nothing proves who the caller is, so it changes nothing else.
		switch {
		case !same:
			return "", pushproxy.Errorf(pushproxy.EDEVICESECRETMISMATCH, "this push token's device was registered with another topic, environment or subscription keys, which cannot change")
		case dead:
			return "", pushproxy.Errorf(pushproxy.EDEVICESECRETMISMATCH, "this push token was reported dead; register the app again for a new token")
		}
		if secret != nil {
			if _, err := tx.Exec(ctx, `UPDATE devices SET secret_hash = $2, updated_at = now() WHERE id = $1`, id, secret); err != nil {
				return "", fmt.Errorf("set device secret: %w", err)
			}
		}
		return id, nil
	}
	switch {
	case !ns.DeviceSecretGiven:
		return "", pushproxy.Errorf(pushproxy.EDEVICESECRETREQUIRED, "this push token belongs to a device already: present its push.device_secret")
	case subtle.ConstantTimeCompare(stored, secret) != 1:
		return "", pushproxy.Errorf(pushproxy.EDEVICESECRETMISMATCH, "push.device_secret is not this device's secret")
	}
	if !same || dead {
		// The device's own app, proven by its secret: a deliberate change of attributes,
		// or a token registered again after it was reported dead.
		_, err := tx.Exec(ctx, `
			UPDATE devices SET topic = $2, environment = $3, updated_at = now(), dead_at = NULL, dead_reason = NULL,
				webpush_p256dh = $4, webpush_auth = $5, webpush_auth_sealed = $6
			WHERE id = $1`, id, p.Topic, p.Environment, wp.P256dh, wp.Auth, wp.AuthSealed)
		if err != nil {
			return "", fmt.Errorf("update device: %w", err)
		}
	}
	return id, nil
}

// webpushColumns are a Web Push device's key columns: the public key in clear, the
// authentication secret sealed (or in clear when the store has no sealer). All nil for
// other platforms.
type webpushColumns struct {
	P256dh, Auth *string
	AuthSealed   []byte
}

// webpushAD is the associated data a device's sealed authentication secret is sealed with.
func webpushAD(endpoint string) []byte { return []byte("webpush\x00" + endpoint) }

// webpushColumns prepares the key columns of p's device.
func (s *Store) webpushColumns(p *pushproxy.PushAddress) (webpushColumns, error) {
	if p == nil || p.Platform != pushproxy.PlatformWebPush {
		return webpushColumns{}, nil
	}
	c := webpushColumns{P256dh: &p.WebPushP256dh}
	if s.sealer == nil {
		c.Auth = &p.WebPushAuth
		return c, nil
	}
	var err error
	if c.AuthSealed, err = s.sealer.Seal([]byte(p.WebPushAuth), webpushAD(p.Token)); err != nil {
		return webpushColumns{}, fmt.Errorf("seal webpush auth: %w", err)
	}
	return c, nil
}

// openWebPushAuth fills in a Web Push device's authentication secret from its columns.
func (s *Store) openWebPushAuth(p *pushproxy.PushAddress, clear *string, sealed []byte) error {
	switch {
	case clear != nil:
		p.WebPushAuth = *clear
	case sealed != nil:
		if s.sealer == nil {
			return errors.New("the subscription's auth secret is sealed and no key file was given")
		}
		b, err := s.sealer.Open(sealed, webpushAD(p.Token))
		if err != nil {
			return fmt.Errorf("open webpush auth: %w", err)
		}
		p.WebPushAuth = string(b)
	}
	return nil
}

// resealWebPushAuth re-seals the Web Push devices' authentication secrets under the
// sealer's primary key, and seals those stored in clear, in batches of one short
// transaction each, as Reseal does for streams. A secret that does not open (damaged, or
// copied from another device) is counted in res.Failed and left as it is.
func (s *Store) resealWebPushAuth(ctx context.Context, batch int, res *ResealResult) error {
	after := "00000000-0000-0000-0000-000000000000"
	for {
		n := 0
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, `
				SELECT id::text, token, webpush_auth, webpush_auth_sealed FROM devices
				WHERE id > $2::uuid AND platform = 'webpush'
					AND (webpush_auth IS NOT NULL OR substring(webpush_auth_sealed FOR $3) <> $1)
				ORDER BY id LIMIT $4 FOR UPDATE`, s.sealer.PrimaryPrefix(), after, prefixLen, batch)
			if err != nil {
				return err
			}
			type row struct {
				id     string
				p      pushproxy.PushAddress
				clear  *string
				sealed []byte
			}
			var todo []row
			for rows.Next() {
				var r row
				if err := rows.Scan(&r.id, &r.p.Token, &r.clear, &r.sealed); err != nil {
					rows.Close()
					return err
				}
				todo = append(todo, r)
			}
			if err := rows.Err(); err != nil {
				return err
			}
			for _, r := range todo {
				n++
				after = r.id
				if err := s.openWebPushAuth(&r.p, r.clear, r.sealed); err != nil {
					res.Failed++
					continue
				}
				r.p.Platform = pushproxy.PlatformWebPush
				c, err := s.webpushColumns(&r.p)
				if err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `UPDATE devices SET webpush_auth = NULL, webpush_auth_sealed = $2 WHERE id = $1`, r.id, c.AuthSealed); err != nil {
					return err
				}
				if r.clear != nil {
					res.Sealed++
				} else {
					res.Resealed++
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("reseal webpush devices: %w", err)
		}
		if n < batch {
			return nil
		}
	}
}

// checkDeviceQuota refuses a handoff for a device that holds max streams already (max 0: no
// bound). The device row is locked by handoffDevice.
func checkDeviceQuota(ctx context.Context, tx pgx.Tx, deviceID string, max int) error {
	if max <= 0 {
		return nil
	}
	var n int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM streams WHERE device_id = $1 AND state = 'held'`, deviceID).Scan(&n); err != nil {
		return fmt.Errorf("count device streams: %w", err)
	}
	if n >= max {
		return pushproxy.Errorf(pushproxy.ELIMIT, "this device already has %d held streams, the most allowed; close one first", n)
	}
	return nil
}

// insertColumns and insertValues are the columns a handoff's stream is inserted with, and
// their values ($1-$12: see CreateStream).
const (
	insertColumns = `id, device_id, url, headers, credentials_sealed, token_hash, resume_id, acked_id, lease_owner, lease_epoch, urgent_events, api_key_hash, compact_by`
	insertValues  = `$1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10, $11, $12`
)

// insertStream inserts a handoff's stream.
const insertStream = `
	INSERT INTO streams AS s (` + insertColumns + `)
	VALUES (` + insertValues + `)
	RETURNING ` + streamColumns

// insertKeyedStreamSQL inserts the stream of a handoff under an API key ($11), in a place
// pushproxy_key_slot (migration 015) takes for it in one of the key's slots, within $13,
// --max-streams-per-key (0: no bound, but the stream is counted all the same), trying slot
// $14 first. It fails with SQLSTATE keyLimitCode when the key holds as many streams as it
// may. The slot is taken in VALUES: Postgres plans that as an insert of constants.
const insertKeyedStreamSQL = `
	INSERT INTO streams AS s (` + insertColumns + `, key_slot)
	VALUES (` + insertValues + `, pushproxy_key_slot($11, $13::int, $14::smallint))
	RETURNING ` + streamColumns

// insertInKeySlotSQL is the path nearly every keyed handoff takes: pushproxy_key_slot's
// first try as one statement, with no function call and no subtransaction. It takes the
// place in slot $14 when the slot is below its share of bound $13 (0: no bound) and the
// key's slots are known to be within their shares of that bound (api_key_bounds), and
// inserts the stream counted in it; otherwise it inserts nothing, and the handoff's
// transaction must be rolled back (an UPDATE that waited for the slot's row and then found
// it full keeps the row locked) and done again with insertKeyedStreamSQL, which may wait for
// every slot of the key and so must not hold one.
//
// Run on a generic plan (keyedFastPath): planned for each execution, as the store's sessions
// plan their statements, it cost more than the function's call it replaces.
const insertInKeySlotSQL = `
	WITH k AS (
		UPDATE api_key_streams SET held = held + 1
		WHERE key_hash = $11 AND slot = $14::smallint
			AND ($13::int <= 0 OR (held < $13::int / 16 + (slot < $13::int % 16)::int
				AND EXISTS (SELECT 1 FROM api_key_bounds b WHERE b.key_hash = $11 AND b.bound = $13::int)))
		RETURNING slot
	)
	INSERT INTO streams AS s (` + insertColumns + `, key_slot)
	SELECT ` + insertValues + `, k.slot FROM k
	RETURNING ` + streamColumns

// keyLimitCode is the SQLSTATE pushproxy_key_slot raises when the key is full.
const keyLimitCode = "PPK01"

// errKeySlotMissed is insertKeyedStream's answer when its one-statement path found no place
// in the slot it tried: the caller rolls the handoff back and does it again with fast false.
var errKeySlotMissed = errors.New("the key's slot has no place for the handoff")

// insertKeyedStream inserts a handoff's stream under an API key, within the key's bound
// (max; 0: none), or refuses with EKEYLIMIT when the key holds max streams already. args
// are insertStream's; slot is the key slot to try first (keySlots.take). With fast, it only
// tries that slot (insertInKeySlotSQL), and answers errKeySlotMissed when it has no place.
func insertKeyedStream(ctx context.Context, tx pgx.Tx, max int, slot int16, fast bool, args []any) (pushproxy.Stream, int64, error) {
	bound := int32(max)
	if max <= 0 || max > math.MaxInt32 {
		bound = 0
	}
	args = append(args, bound, slot)
	if fast {
		b := &pgx.Batch{}
		b.Queue(`SET LOCAL plan_cache_mode = force_generic_plan`)
		b.Queue(insertInKeySlotSQL, args...)
		br := tx.SendBatch(ctx, b)
		defer br.Close()
		if _, err := br.Exec(); err != nil {
			return pushproxy.Stream{}, 0, wrapInsert(err)
		}
		st, epoch, err := scanStream(br.QueryRow())
		if errors.Is(err, pgx.ErrNoRows) {
			return st, 0, errKeySlotMissed
		}
		return st, epoch, wrapInsert(err)
	}
	st, epoch, err := scanStream(tx.QueryRow(ctx, insertKeyedStreamSQL, args...))
	if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) && pe.Code == keyLimitCode {
		return st, 0, pushproxy.Errorf(pushproxy.EKEYLIMIT, "this API key already holds %d streams, the most allowed; close some first", max)
	}
	return st, epoch, wrapInsert(err)
}

// keySlots deals the slots of the per-key stream quota (migration 012) to a store's keyed
// handoffs in flight: each gets the slot the fewest of them hold, so that they do not wait
// for each other's lock on a slot's row (held until the handoff commits). Every store starts
// dealing at a random slot, so that two instances' first handoffs seldom pick the same one;
// when they do, one waits for the other's commit, and counts exactly all the same.
type keySlots struct {
	mu    sync.Mutex
	inUse [keySlotCount]int
	next  int
}

// keySlotCount is the slots per key of migration 012.
const keySlotCount = 16

func newKeySlots() *keySlots { return &keySlots{next: rand.IntN(keySlotCount)} }

// take returns the slot for a handoff; give it back with give once the handoff's transaction
// has ended.
func (k *keySlots) take() int16 {
	k.mu.Lock()
	defer k.mu.Unlock()
	best := k.next
	for i := 1; i < keySlotCount && k.inUse[best] > 0; i++ {
		if s := (k.next + i) % keySlotCount; k.inUse[s] < k.inUse[best] {
			best = s
		}
	}
	k.inUse[best]++
	k.next = (best + 1) % keySlotCount
	return int16(best)
}

func (k *keySlots) give(s int16) {
	k.mu.Lock()
	k.inUse[s]--
	k.mu.Unlock()
}

func wrapInsert(err error) error {
	if err != nil {
		return fmt.Errorf("insert stream: %w", err)
	}
	return nil
}
