-- Records may be held in state 3 (unknown): the request reached the
-- upstream and its answer was lost, so the key is not claimable again until
-- an operator resolves it or its retention ends.
--
-- The new check is a superset of the old one, so every existing row
-- satisfies it: NOT VALID skips the full-table scan that validating it
-- would cost, and the constraint is enforced for every row written from now
-- on. {{state_check}} is the name PostgreSQL gave the column's check in
-- 0001 (<table>_state_check).
ALTER TABLE {{table}} DROP CONSTRAINT IF EXISTS {{state_check}};
ALTER TABLE {{table}} ADD CONSTRAINT {{state_check}} CHECK (state IN (1, 2, 3)) NOT VALID;

-- Records that are not completed (in progress or unknown), by state and key,
-- for Store.List (its query repeats "state <> 2" so the planner uses it).
-- Building it reads the table once while holding a lock that blocks writes
-- to it; the index itself stays small (completed records are left out).
CREATE INDEX IF NOT EXISTS {{open_index}} ON {{table}} (state, key) WHERE state <> 2;
