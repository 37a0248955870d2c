-- The open-records index (0002) was on (state, key). Keys are hashes, so
-- every new record inserted its entry on a random page of that index, and
-- completing the record left the entry behind, dead, until VACUUM: the
-- index was as costly to maintain as the primary key and grew like it.
-- Indexed by state alone, a new entry goes to the right end of its state's
-- entries (PostgreSQL orders equal keys by heap position), which stays in
-- memory. Store.List reads the open records of one state (few: in-progress
-- requests and held unknown outcomes) and sorts them by key.
--
-- The new index is built first, while the old one still serves: building
-- reads the table once and blocks writes to it (reads go on). Dropping the
-- old index then takes an exclusive lock on the table until this
-- migration's transaction commits, which is at once.
CREATE INDEX IF NOT EXISTS {{open_state_index}} ON {{table}} (state) WHERE state <> 2;
DROP INDEX IF EXISTS {{open_index_in_schema}};
