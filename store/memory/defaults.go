package memory

// DefaultMaxEntries is Options.MaxEntries's default.
const DefaultMaxEntries = 1_000_000
