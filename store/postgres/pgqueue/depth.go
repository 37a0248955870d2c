package pgqueue

import (
	"context"
	"fmt"
)

// Depth returns how many messages of queue q are stored (ready, in
// backoff or being delivered) and how many are dead (exact counts over
// the queue's index). It fails with the database's error.
func (b *Backend) Depth(ctx context.Context, q string) (queued, dead int64, err error) {
	err = b.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+b.t.messages+` WHERE queue = $1), (SELECT count(*) FROM `+b.t.dead+` WHERE queue = $1)`, q).Scan(&queued, &dead)
	if err != nil {
		return 0, 0, fmt.Errorf("pgqueue: depth: %w", err)
	}
	return queued, dead, nil
}
