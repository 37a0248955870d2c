// Command leveepprof is `levee serve` with net/http/pprof on a separate
// loopback listener, for profiling the gateway under load. It runs the
// same gateway.Server as cmd/levee; only the pprof listener is added.
//
//	leveepprof -config levee.yaml -pprof 127.0.0.1:16060
//
// Then: go tool pprof -seconds 10 http://127.0.0.1:16060/debug/pprof/profile
package main

import (
	"context"
	"flag"
	"log"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/leveehq/levee/gateway"
)

func main() {
	config := flag.String("config", "levee.yaml", "levee config file")
	pprofAddr := flag.String("pprof", "127.0.0.1:16060", "pprof listener (loopback)")
	mutexFrac := flag.Int("mutex-fraction", 0, "runtime.SetMutexProfileFraction (0: off)")
	blockRate := flag.Int("block-rate", 0, "runtime.SetBlockProfileRate in ns (0: off)")
	flag.Parse()
	runtime.SetMutexProfileFraction(*mutexFrac)
	runtime.SetBlockProfileRate(*blockRate)
	ctx := context.Background()
	srv, err := gateway.NewServer(ctx, *config, gateway.ServerOptions{Version: "bench"})
	if err != nil {
		log.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		log.Fatal(err)
	}
	go func() { log.Println(http.ListenAndServe(*pprofAddr, nil)) }()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
}
