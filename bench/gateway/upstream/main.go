// Command upstream is the benchmark's origin server: it answers every
// GET and POST with a small JSON body as fast as net/http allows, with
// keep-alive, and counts the TCP connections it accepts so the benchmark
// can check that a proxy reuses its upstream connections.
//
//	upstream -listen 127.0.0.1:18081 [-procs N]
//
// GET /__stats (on the same listener) answers {"accepted":N,"requests":N};
// it is not counted as a request.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"
)

var body = []byte(`{"id":"pay_0123456789","status":"succeeded","amount":1000,"currency":"eur"}` + "\n")

func main() {
	listen := flag.String("listen", "127.0.0.1:18081", "address to listen on (keep it on loopback)")
	procs := flag.Int("procs", 0, "GOMAXPROCS (0: the Go default, i.e. the CPUs this process may run on)")
	flag.Parse()
	if *procs > 0 {
		runtime.GOMAXPROCS(*procs)
	}
	var accepted, requests atomic.Int64
	clen := strconv.Itoa(len(body))
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/__stats" {
			fmt.Fprintf(w, `{"accepted":%d,"requests":%d}`+"\n", accepted.Load(), requests.Load())
			return
		}
		requests.Add(1)
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch:
		default:
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		if r.Body != nil {
			_, _ = io.Copy(io.Discard, r.Body)
		}
		hd := w.Header()
		hd["Content-Type"] = []string{"application/json"}
		hd["Content-Length"] = []string{clen}
		status := http.StatusOK
		if r.Method == http.MethodPost {
			status = http.StatusCreated
		}
		w.WriteHeader(status)
		if r.Method != http.MethodHead {
			_, _ = w.Write(body)
		}
	})
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				accepted.Add(1)
			}
		},
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("upstream listening on %s (GOMAXPROCS=%d)", ln.Addr(), runtime.GOMAXPROCS(0))
	log.Fatal(srv.Serve(ln))
}
