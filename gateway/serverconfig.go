package gateway

import (
	"time"

	"github.com/leveehq/levee/internal/config"
)

// ServerConfig bounds what clients can make levee do. Every field but
// max_body_bytes and shutdown_timeout needs a restart to change.
type ServerConfig struct {
	// ReadHeaderTimeout bounds reading request headers. Default 10s.
	ReadHeaderTimeout Duration `yaml:"read_header_timeout" reload:"restart"`
	// ReadTimeout bounds reading a whole request. Default 60s.
	ReadTimeout Duration `yaml:"read_timeout" reload:"restart"`
	// WriteTimeout bounds writing a response. Default 120s.
	WriteTimeout Duration `yaml:"write_timeout" reload:"restart"`
	// IdleTimeout closes idle keep-alive connections. Default 120s.
	IdleTimeout Duration `yaml:"idle_timeout" reload:"restart"`
	// MaxHeaderBytes bounds request headers (431 above). Default 64KiB.
	MaxHeaderBytes ByteSize `yaml:"max_header_bytes" reload:"restart"`
	// MaxBodyBytes bounds request bodies (413 above). Default 10MiB.
	MaxBodyBytes ByteSize `yaml:"max_body_bytes"`
	// ShutdownTimeout bounds draining on SIGTERM. Default: the longest
	// route timeout + in_flight_wait + store_timeout, plus 5s, and at
	// least 30s. A smaller value is refused: a request cut off mid-flight
	// could leave its claim unrecorded, and its retry would run again.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	// Engine serves the proxy listener: "levee" (default) is levee's own
	// HTTP/1.1 server, which serves common requests itself and hands any
	// connection it does not (HTTP/1.0, chunked or 100-continue uploads,
	// WebSocket upgrades, heads over 4 KiB, malformed requests) to Go's
	// net/http server; "net/http" serves every connection with net/http.
	Engine string `yaml:"engine" reload:"restart"`
}

// The values of server.engine.
const (
	EngineLevee   = "levee"
	EngineNetHTTP = "net/http"
)

// Defaults implements config.Section. shutdown_timeout is the root's
// (it depends on the routes).
func (s *ServerConfig) Defaults() {
	config.Default(&s.ReadHeaderTimeout, Duration(10*time.Second))
	config.Default(&s.ReadTimeout, Duration(60*time.Second))
	config.Default(&s.WriteTimeout, Duration(120*time.Second))
	config.Default(&s.IdleTimeout, Duration(120*time.Second))
	config.Default(&s.MaxHeaderBytes, 64<<10)
	config.Default(&s.MaxBodyBytes, 10<<20)
	config.Default(&s.Engine, EngineLevee)
}

// Validate implements config.Section.
func (s *ServerConfig) Validate(r *config.Report, path string) {
	if e := s.Engine; e != EngineLevee && e != EngineNetHTTP {
		r.Bad(config.Join(path, "engine"), "unknown engine %q (want %s or %s)", e, EngineLevee, EngineNetHTTP)
	}
}
