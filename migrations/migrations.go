// Package migrations holds pushproxy's numbered SQL migrations, embedded in the binary.
//
// Files are named NNN_description.sql and applied in order by store.Migrate (which uses
// github.com/jackc/tern). A file may hold a down migration after the line
// "---- create above / drop below ----".
package migrations

import "embed"

// FS holds the migration files.
//
//go:embed *.sql
var FS embed.FS
