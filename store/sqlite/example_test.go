package sqlite_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/sqlite"
)

func Example() {
	dir, err := os.MkdirTemp("", "levee-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// One file; other gateway processes on this host may open it too.
	store, err := sqlite.Open(filepath.Join(dir, "levee.db"), sqlite.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()

	engine := idempotency.New(store, idempotency.Options{})
	ctx := context.Background()
	fp := idempotency.FingerprintOf([]byte(`{"amount":100}`))
	charge := func(context.Context) ([]byte, error) { return []byte(`{"id":"ch_1"}`), nil }

	for range 2 {
		r, err := engine.Do(ctx, "order-42", fp, charge)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s replayed=%v\n", r.Value, r.Replayed)
	}

	// Expired records already count as absent; this reclaims their space.
	if _, err := store.DeleteExpired(ctx, time.Now(), 1000); err != nil {
		log.Fatal(err)
	}
	// Output:
	// {"id":"ch_1"} replayed=false
	// {"id":"ch_1"} replayed=true
}
