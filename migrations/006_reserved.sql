-- Reserved: number 6 belongs to a migration of another branch under way (forwarded
-- credentials sealed at rest). This file keeps the numbers contiguous (tern refuses a gap)
-- until that one lands; whoever merges it replaces this file with it.
SELECT 1;

---- create above / drop below ----

SELECT 1;
