package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Dashboard sessions (admin_sessions). The store sees only hashes of session ids; the
// expiry is the database's clock, so instances with skewed clocks agree.

// CreateAdminSession records a session that lasts ttl, and deletes the expired ones.
func (s *Store) CreateAdminSession(ctx context.Context, idHash, tokenMark []byte, ttl time.Duration) error {
	_, err := s.pool.Exec(ctx, `
		WITH gone AS (DELETE FROM admin_sessions WHERE expires_at <= now())
		INSERT INTO admin_sessions (id_hash, token_mark, expires_at)
		VALUES ($1, $2, now() + make_interval(secs => $3))`,
		idHash, tokenMark, ttl.Seconds())
	if err != nil {
		return fmt.Errorf("create admin session: %w", err)
	}
	return nil
}

// AdminSessionValid tells whether a session exists, has not expired, and was opened with
// the admin token whose mark is tokenMark.
func (s *Store) AdminSessionValid(ctx context.Context, idHash, tokenMark []byte) (bool, error) {
	var ok bool
	err := s.pool.QueryRow(ctx, `
		SELECT expires_at > now() AND token_mark = $2 FROM admin_sessions WHERE id_hash = $1`,
		idHash, tokenMark).Scan(&ok)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("check admin session: %w", err)
	}
	return ok, nil
}

// DeleteAdminSession ends a session (sign-out). Ending one that does not exist is no error.
func (s *Store) DeleteAdminSession(ctx context.Context, idHash []byte) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM admin_sessions WHERE id_hash = $1`, idHash); err != nil {
		return fmt.Errorf("delete admin session: %w", err)
	}
	return nil
}
