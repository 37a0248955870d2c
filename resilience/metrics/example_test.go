package metrics_test

import (
	"context"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/leveehq/levee/resilience"
	"github.com/leveehq/levee/resilience/metrics"
)

func Example() {
	reg := prometheus.NewRegistry()
	obs, err := metrics.New(reg) // one Observer for every executor of the process
	if err != nil {
		panic(err)
	}
	exec, _ := resilience.New(resilience.Settings{Name: "crm", Observer: obs})
	resp, _ := exec.Do(context.Background(), &resilience.Call{Send: func(context.Context, *resilience.Call) (*http.Response, error) {
		return &http.Response{StatusCode: 200, Body: http.NoBody}, nil
	}})
	resp.Body.Close()
	fmt.Println(testutil.CollectAndCount(reg, "levee_resilience_attempts_total"))
	// Output: 1
}
