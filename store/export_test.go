package store

// MigrateFS applies the migrations of a file system of the test's making: the binary's own
// plus "future" ones, as a newer release would.
var MigrateFS = migrateFS

// The hot statements of reading and acknowledging, for their query plans.
const (
	PageSQL    = pageSQL
	PagesSQL   = pagesSQL
	AckByIDSQL = ackByIDSQL
	AckSQL     = ackSQL
	ReclaimSQL = reclaimSQL
	// ReclaimDoneSQL takes the streams of a reclaim batch off the queue.
	ReclaimDoneSQL = reclaimDoneSQL
)

// CompactSQL is the commit's compaction statement, for its query plan.
const CompactSQL = compactSQL
