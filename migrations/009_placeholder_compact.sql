-- pushproxy:compatible-with 8
--
-- Placeholder (branch compact): the number is taken by another branch's migration; the lead
-- renumbers when merging. tern refuses gaps in the numbering.
SELECT 1;

---- create above / drop below ----

SELECT 1;
