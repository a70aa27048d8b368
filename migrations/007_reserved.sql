-- pushproxy:compatible-with 5
-- Reserved: number 7 belongs to a migration of another branch under way. This file keeps the
-- numbers contiguous (tern refuses a gap) until that one lands; whoever merges replaces it.
SELECT 1;
---- create above / drop below ----
SELECT 1;
