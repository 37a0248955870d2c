package sqlitequeue

import (
	"context"
	"fmt"
)

// Depth returns how many messages of queue q are stored (ready, in
// backoff or being delivered) and how many are dead (exact counts over
// the queue's index, so their cost grows with the backlog). It fails
// with the database's error.
func (b *Backend) Depth(ctx context.Context, q string) (queued, dead int64, err error) {
	err = b.rd.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM levee_queue_messages WHERE queue = ?), (SELECT count(*) FROM levee_queue_dead WHERE queue = ?)`, q, q).Scan(&queued, &dead)
	if err != nil {
		return 0, 0, fmt.Errorf("sqlitequeue: depth: %w", err)
	}
	return queued, dead, nil
}
