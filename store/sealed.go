package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy"
)

// Sealer keeps what a stream forwards to its origin (header values, the URL's query)
// encrypted at rest. Seal encrypts under the primary key; Open decrypts what any key sealed.
// Every ciphertext starts with the prefix of the key that sealed it, of the same length for
// every key. *seal.Keys is one.
type Sealer interface {
	Seal(plaintext, associatedData []byte) ([]byte, error)
	Open(ciphertext, associatedData []byte) ([]byte, error)
	// PrimaryPrefix starts what Seal returns now.
	PrimaryPrefix() []byte
	// Prefixes start what Open can decrypt.
	Prefixes() [][]byte
}

// credentials is the sealed part of a stream.
type credentials struct {
	Headers map[string]string `json:"h,omitempty"`
	Query   string            `json:"q,omitempty"`
}

// splitURL returns rawURL without its query, and the query.
func splitURL(rawURL string) (bare, query string) {
	bare, query, _ = strings.Cut(rawURL, "?")
	return bare, query
}

// joinURL undoes splitURL.
func joinURL(bare, query string) string {
	if query == "" {
		return bare
	}
	return bare + "?" + query
}

// WithoutQuery returns a stream URL as documents show it: without its query string, which
// may carry credentials (?key=, ?token=).
func WithoutQuery(rawURL string) string {
	bare, _ := splitURL(rawURL)
	return bare
}

// newStreamID returns a random (version 4) UUID: a stream's id is known before its row is
// written, so that its credentials can be sealed to it.
func newStreamID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// sealedRow is how a new stream's URL and headers are stored.
type sealedRow struct {
	ID      string
	URL     string            // without the query when sealed
	Headers map[string]string // {} when sealed
	Sealed  []byte            // nil: nothing to seal, or no sealer (stored in clear)
}

// sealRow prepares a new stream's row: with a sealer, the header values and the query are
// sealed to the stream's id, and only the bare URL stays in clear.
func (s *Store) sealRow(rawURL string, headers map[string]string) (sealedRow, error) {
	r := sealedRow{ID: newStreamID(), URL: rawURL, Headers: headers}
	if r.Headers == nil {
		r.Headers = map[string]string{}
	}
	if s.sealer == nil {
		return r, nil
	}
	var c credentials
	r.URL, c.Query = splitURL(rawURL)
	if len(headers) > 0 {
		c.Headers = headers
	}
	r.Headers = map[string]string{}
	if c.Query == "" && c.Headers == nil {
		return r, nil
	}
	var err error
	if r.Sealed, err = s.seal(r.ID, c); err != nil {
		return sealedRow{}, err
	}
	return r, nil
}

func (s *Store) seal(id string, c credentials) ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("seal credentials: %w", err)
	}
	return s.sealer.Seal(b, []byte(id))
}

// openRow fills in st's URL and headers from the sealed value of its row (nil: the row holds
// them in clear).
func (s *Store) openRow(st *pushproxy.Stream, sealed []byte) error {
	if sealed == nil {
		return nil
	}
	if s.sealer == nil {
		return errors.New("the stream's credentials are sealed and no key file was given")
	}
	b, err := s.sealer.Open(sealed, []byte(st.ID))
	if err != nil {
		return err
	}
	var c credentials
	if err := json.Unmarshal(b, &c); err != nil {
		return fmt.Errorf("open credentials: %w", err)
	}
	st.URL, _ = splitURL(st.URL)
	st.URL = joinURL(st.URL, c.Query)
	st.Headers = c.Headers
	if st.Headers == nil {
		st.Headers = map[string]string{}
	}
	return nil
}

// openable is the SQL condition, on streams c with the prefixes in $n, of a row whose
// credentials this instance can open: an instance never claims a stream sealed under a key
// it lacks (another instance, with the key, does).
func openableSQL(n int) string {
	return fmt.Sprintf(`(c.credentials_sealed IS NULL OR substring(c.credentials_sealed FOR %d) = ANY($%d::bytea[]))`, prefixLen, n)
}

// prefixLen is the length of a key prefix (seal.PrefixSize).
const prefixLen = 5

func (s *Store) prefixes() [][]byte {
	if s.sealer == nil {
		return [][]byte{}
	}
	return s.sealer.Prefixes()
}

// failUnreadableSQL fails the held streams $1 whose credentials do not open.
const failUnreadableSQL = `
	UPDATE streams SET state = 'failed', lease_owner = NULL, connected = false,
		state_reason = 'the forwarded credentials do not decrypt with the key file: wrong key or damaged row',
		closed_at = now(), updated_at = now()
	WHERE id = ANY($1::uuid[]) AND state = 'held'`

// canOpen reports whether sealed starts with the prefix of one of the sealer's keys.
func (s *Store) canOpen(sealed []byte) bool {
	for _, p := range s.prefixes() {
		if bytes.HasPrefix(sealed, p) {
			return true
		}
	}
	return false
}

// openClaims opens the credentials of claimed streams. A stream whose credentials do not
// authenticate (damaged, or sealed under another key with the same id) fails with that
// reason: it cannot be held, and nothing in clear is made up for it.
func (s *Store) openClaims(ctx context.Context, claims []Claim, sealed [][]byte) ([]Claim, error) {
	kept := claims[:0]
	var bad []string
	for i, c := range claims {
		if err := s.openRow(&c.Stream, sealed[i]); err != nil {
			s.log.ErrorContext(ctx, "a stream's forwarded credentials do not open; failing it",
				"stream", c.Stream.ID, "error", err.Error())
			bad = append(bad, c.Stream.ID)
			continue
		}
		kept = append(kept, c)
	}
	if len(bad) > 0 {
		_, err := s.pool.Exec(ctx, failUnreadableSQL, bad)
		if err != nil {
			return nil, fmt.Errorf("fail streams with unreadable credentials: %w", err)
		}
	}
	return kept, nil
}

// SealedCounts counts the streams by how their credentials are stored: by the key prefix
// they are sealed under (hex), and "clear" for held streams with headers or a query in clear.
func (s *Store) SealedCounts(ctx context.Context) (map[string]int64, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT CASE WHEN credentials_sealed IS NULL THEN 'clear'
			ELSE encode(substring(credentials_sealed FOR $1), 'hex') END, count(*)
		FROM streams
		WHERE credentials_sealed IS NOT NULL OR headers <> '{}' OR strpos(url, '?') > 0
		GROUP BY 1`, prefixLen)
	if err != nil {
		return nil, fmt.Errorf("count sealed streams: %w", err)
	}
	out := map[string]int64{}
	var (
		k string
		n int64
	)
	_, err = pgx.ForEachRow(rows, []any{&k, &n}, func() error { out[k] = n; return nil })
	if err != nil {
		return nil, fmt.Errorf("count sealed streams: %w", err)
	}
	return out, nil
}

// ResealOptions bound a rotation's work.
type ResealOptions struct {
	Batch int           // rows per transaction (0: 500)
	Pause time.Duration // between transactions, to leave room to the holders' commits
	// Progress, when set, is told after each batch.
	Progress func(resealed int64)
}

// ResealResult is what a rotation did.
type ResealResult struct {
	Resealed int64 // sealed values re-sealed under the primary key
	Sealed   int64 // held streams' credentials in clear, sealed
	Dropped  int64 // ended streams' credentials in clear, dropped
	Failed   int64 // held streams whose sealed value does not open (damaged): failed
}

// Reseal re-seals every stream's credentials, and every Web Push device's authentication
// secret, under the sealer's primary key, in batches of one short transaction each, and
// seals those still in clear; ended streams' clear credentials are dropped. Rows a holder's commit has locked are skipped and taken on the
// next pass; it returns when a pass finds nothing left (or ctx ends). Holders are not
// disturbed: they hold their credentials in memory, and a claim in between opens the old
// value or the new one.
func (s *Store) Reseal(ctx context.Context, opts ResealOptions) (ResealResult, error) {
	var res ResealResult
	if s.sealer == nil {
		return res, errors.New("reseal: no key file")
	}
	if opts.Batch <= 0 {
		opts.Batch = 500
	}
	if err := s.resealWebPushAuth(ctx, opts.Batch, &res); err != nil {
		return res, err
	}
	for pass := 0; ; pass++ {
		after := "00000000-0000-0000-0000-000000000000"
		touched := false
		for {
			n, last, err := s.resealBatch(ctx, after, opts.Batch, &res)
			if err != nil {
				return res, err
			}
			if last == "" {
				break
			}
			touched = touched || n > 0
			after = last
			if opts.Progress != nil {
				opts.Progress(res.Resealed + res.Sealed + res.Dropped)
			}
			if opts.Pause > 0 {
				select {
				case <-ctx.Done():
					return res, ctx.Err()
				case <-time.After(opts.Pause):
				}
			}
		}
		left, err := s.unsealedLeft(ctx)
		if err != nil {
			return res, err
		}
		if left == 0 {
			return res, nil
		}
		if !touched {
			// Only locked rows were left: let their commits finish.
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

// needsResealSQL is the condition of a row Reseal has to change.
const needsResealSQL = `((credentials_sealed IS NOT NULL AND substring(credentials_sealed FOR 5) <> $1)
	OR (credentials_sealed IS NULL AND (headers <> '{}' OR strpos(url, '?') > 0)))`

func (s *Store) unsealedLeft(ctx context.Context) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM streams WHERE `+needsResealSQL, s.sealer.PrimaryPrefix()).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("reseal: count: %w", err)
	}
	return n, nil
}

// resealBatch handles the rows after the id after, up to limit of them in id order. It
// returns how many it changed and the last id it looked at ("" when there were none).
func (s *Store) resealBatch(ctx context.Context, after string, limit int, res *ResealResult) (int, string, error) {
	changed, last := 0, ""
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// The page is found by id alone (the primary key), so that a pass reads the table
		// once; rows a commit holds are skipped, not waited for.
		rows, err := tx.Query(ctx, `
			WITH page AS (SELECT id FROM streams WHERE id > $2::uuid ORDER BY id LIMIT $3)
			SELECT (SELECT id::text FROM page ORDER BY id DESC LIMIT 1), s.id::text, s.url, s.headers, s.credentials_sealed, s.state
			FROM streams s
			WHERE s.id IN (SELECT id FROM page) AND `+needsResealSQL+`
			FOR UPDATE OF s SKIP LOCKED`, s.sealer.PrimaryPrefix(), after, limit)
		if err != nil {
			return err
		}
		type row struct {
			st     pushproxy.Stream
			sealed []byte
		}
		var todo []row
		for rows.Next() {
			var r row
			if err := rows.Scan(&last, &r.st.ID, &r.st.URL, &r.st.Headers, &r.sealed, &r.st.State); err != nil {
				rows.Close()
				return err
			}
			todo = append(todo, r)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if last == "" {
			// No row of the page needs work: still move past it.
			if err := tx.QueryRow(ctx, `SELECT coalesce((SELECT id::text FROM (SELECT id FROM streams WHERE id > $1::uuid ORDER BY id LIMIT $2) p ORDER BY id DESC LIMIT 1), '')`, after, limit).Scan(&last); err != nil {
				return err
			}
		}
		b := &pgx.Batch{}
		for _, r := range todo {
			if r.sealed != nil {
				if err := s.openRow(&r.st, r.sealed); err != nil {
					if !s.canOpen(r.sealed) {
						return fmt.Errorf("stream %s: %w; add that key to the file and rotate again", r.st.ID, err)
					}
					// Damaged, or moved from another row: it fails as a claim would fail it.
					s.log.ErrorContext(ctx, "a stream's forwarded credentials do not open; failing it",
						"stream", r.st.ID, "error", err.Error())
					b.Queue(failUnreadableSQL, []string{r.st.ID})
					res.Failed++
					continue
				}
				res.Resealed++
			} else if r.st.State != pushproxy.StateHeld {
				b.Queue(`UPDATE streams SET headers = '{}', url = split_part(url, '?', 1) WHERE id = $1`, r.st.ID)
				res.Dropped++
				continue
			} else {
				res.Sealed++
			}
			var c credentials
			r.st.URL, c.Query = splitURL(r.st.URL)
			if len(r.st.Headers) > 0 {
				c.Headers = r.st.Headers
			}
			sealed, err := s.seal(r.st.ID, c)
			if err != nil {
				return err
			}
			b.Queue(`UPDATE streams SET credentials_sealed = $2, headers = '{}', url = $3 WHERE id = $1`, r.st.ID, sealed, r.st.URL)
		}
		changed = len(todo)
		if b.Len() > 0 {
			return tx.SendBatch(ctx, b).Close()
		}
		return nil
	})
	if err != nil {
		return 0, "", fmt.Errorf("reseal: %w", err)
	}
	return changed, last, nil
}

// KeyCount is a number of streams sealed under one key, named by its prefix.
type KeyCount struct {
	Prefix  []byte
	Streams int64
}

// UnopenableHeld counts the held streams sealed under keys the sealer lacks, by key: this
// instance leaves them to others (an operator should hear of it at start-up). It reads every
// held stream once.
func (s *Store) UnopenableHeld(ctx context.Context) ([]KeyCount, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT substring(c.credentials_sealed FOR 5), count(*) FROM streams c
		WHERE c.state = 'held' AND c.credentials_sealed IS NOT NULL AND NOT `+openableSQL(1)+`
		GROUP BY 1 ORDER BY 2 DESC`, s.prefixes())
	if err != nil {
		return nil, fmt.Errorf("count unopenable streams: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[KeyCount])
	if err != nil {
		return nil, fmt.Errorf("count unopenable streams: %w", err)
	}
	return out, nil
}
