-- One row per idempotency key. {{table}} and {{expires_at_index}} are
-- replaced with the quoted, schema-qualified names from Options.
--
-- key uses the "C" collation: keys are compared for equality only, and
-- byte-wise comparison keeps the primary-key index fast whatever the
-- database's default collation is.
CREATE TABLE IF NOT EXISTS {{table}} (
	key         text COLLATE "C" PRIMARY KEY,
	fingerprint bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
	state       smallint    NOT NULL CHECK (state IN (1, 2)),
	token       bigint      NOT NULL,
	lease_until timestamptz NOT NULL,
	expires_at  timestamptz NOT NULL,
	response    bytea
);

-- PostgreSQL has no TTL: expiry is decided logically on every read, and
-- DeleteExpired uses this index to reclaim the space of expired rows.
CREATE INDEX IF NOT EXISTS {{expires_at_index}} ON {{table}} (expires_at);
