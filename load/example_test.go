package load_test

import (
	"fmt"

	"github.com/leveehq/levee/load"
)

func ExampleParseRate() {
	for _, s := range []string{"500/s", "30/m", "50/500ms"} {
		r, err := load.ParseRate(s)
		if err != nil {
			fmt.Println(err)
			continue
		}
		fmt.Printf("%s = %g/s\n", r, r.PerSecond())
	}
	_, err := load.ParseRate("fast")
	fmt.Println(err)
	// Output:
	// 500/s = 500/s
	// 30/m = 0.5/s
	// 50/500ms = 100/s
	// load: invalid options: rate "fast": want a count from 1 to 1000000, e.g. 500/s
}
