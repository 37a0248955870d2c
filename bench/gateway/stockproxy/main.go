// Command stockproxy is Go's stock reverse proxy, for comparison:
// httputil.NewSingleHostReverseProxy with http.DefaultTransport (2 idle
// connections kept per host), or with -transport tuned, the same proxy
// over a transport that keeps enough idle connections for the load.
//
//	stockproxy -listen 127.0.0.1:18090 -upstream http://127.0.0.1:18081 [-transport default|tuned]
package main

import (
	"flag"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18090", "address to listen on")
	upstream := flag.String("upstream", "http://127.0.0.1:18081", "upstream base URL")
	transport := flag.String("transport", "default", "default (http.DefaultTransport) or tuned (MaxIdleConnsPerHost 1024)")
	flag.Parse()
	u, err := url.Parse(*upstream)
	if err != nil {
		log.Fatal(err)
	}
	p := httputil.NewSingleHostReverseProxy(u)
	switch *transport {
	case "default":
		// p.Transport nil: http.DefaultTransport.
	case "tuned":
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConns = 4096
		t.MaxIdleConnsPerHost = 1024
		p.Transport = t
	default:
		log.Fatalf("unknown -transport %q", *transport)
	}
	srv := &http.Server{Addr: *listen, Handler: p, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	log.Printf("stockproxy (%s transport) on %s -> %s", *transport, *listen, u)
	log.Fatal(srv.ListenAndServe())
}
