// Package migrations holds pushproxy's numbered SQL migrations, embedded in the binary.
//
// Files are named NNN_description.sql and applied in order by store.Migrate (which uses
// github.com/jackc/tern). A file may hold a down migration after the line
// "---- create above / drop below ----".
//
// # Rolling upgrades
//
// The schema version is the number of migrations applied; a binary's version is the number
// of files here. While a new release is rolled out, instances of the previous release keep
// running (and may restart) on the schema the new release migrated to. They do so only when
// every newer migration says it is compatible with their code, by a line of its own:
//
//	-- pushproxy:compatible-with 4
//
// meaning: code of schema version 4 (and later) works on the schema after this migration.
// Without the line, a migration is compatible only with code of its own version or newer,
// and instances of older releases refuse to start on it. Declare a migration compatible when
// it only expands the schema in ways older code does not notice (expand/contract):
//
//   - new tables, new nullable columns or columns with a default, new indexes (built
//     CONCURRENTLY, in a file marked "---- tern: disable-tx ----", on large tables);
//   - no renames, no dropped or retyped columns the older code reads or writes, no new NOT
//     NULL constraint or CHECK the older code's writes would break.
//
// A contraction (dropping what the previous release used) comes in a later release than the
// one that stopped using it, and declares compatibility with that release's version at most.
// The declarations are recorded in the database (pushproxy_schema_compat) as migrations are
// applied, since older binaries do not have the newer files.
package migrations

import "embed"

// FS holds the migration files.
//
//go:embed *.sql
var FS embed.FS
