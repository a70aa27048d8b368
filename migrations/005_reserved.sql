-- Reserved: number 5 belongs to a migration of another branch under way (store timeouts and
-- leases). This file keeps the numbers contiguous (tern refuses a gap) until that one lands;
-- whoever merges it replaces this file with it.
SELECT 1;

---- create above / drop below ----

SELECT 1;
