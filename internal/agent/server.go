// Package agent is cylo's guest agent: it serves the agentproto protocol,
// runs each program in a cgroup of its own with the request's limits, and
// reports how it ended. It runs as PID 1 in a guest, or as a host process
// for protocol tests and the Firecracker test double.
package agent

import (
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/cylo-dev/cylo/internal/agentproto"
	"github.com/cylo-dev/cylo/internal/procfs"
)

// Version is the agent build, set with -ldflags "-X ...agent.Version=...".
var Version = "dev"

// Config configures a Server.
type Config struct {
	// Kernel is the kernel release reported in Health.
	Kernel string
	// CgroupParent is a cgroup v2 directory under which each run gets a
	// child cgroup. Empty means runs get no cgroup, so memory and process
	// limits are not enforced and a timeout kills only the process group.
	CgroupParent string
	// RunAs is the uid and gid programs run as. Nil keeps the agent's own.
	RunAs *Credential
	// DirBase, when set, makes a host-process agent write each run's
	// working directory and absolute file paths under DirBase/run-N, a
	// directory of the run's own that is removed after it. Runs then never
	// write into the host's /work or into each other's files, as in a
	// fresh guest.
	DirBase string
	// Home is the HOME directory given to programs when the request does
	// not set one.
	Home string
	// PowerOff is called by POST /v1/shutdown. Nil means shutdown is not
	// supported (a host-process agent).
	PowerOff func()
	// Logger receives lifecycle messages. Nil discards them.
	Logger *slog.Logger
}

// Credential is a uid and gid.
type Credential struct {
	UID, GID uint32
}

// Server serves the agent protocol. Create it with NewServer.
type Server struct {
	cfg     Config
	reaper  *reaper
	started time.Time
	h2      *http2.Server
	mux     *http.ServeMux
}

// runCounter numbers runs across every Server of the process, so their
// cgroups never collide.
var runCounter atomic.Int64

// NewServer returns a server ready to serve connections. It starts the
// process reaper, which must be the only code in the process that waits
// for children.
func NewServer(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:     cfg,
		reaper:  startReaper(cfg.Logger),
		started: time.Now(),
		// Large windows let output stream without waiting for the host to
		// acknowledge each 64 KiB.
		h2: &http2.Server{
			MaxUploadBufferPerConnection: 8 << 20,
			MaxUploadBufferPerStream:     4 << 20,
			IdleTimeout:                  0,
		},
		mux: http.NewServeMux(),
	}
	s.mux.HandleFunc("GET "+agentproto.PathHealth, s.handleHealth)
	s.mux.HandleFunc("POST "+agentproto.PathSync, s.handleSync)
	s.mux.HandleFunc("POST "+agentproto.PathExec, s.handleExec)
	s.mux.HandleFunc("POST "+agentproto.PathShutdown, s.handleShutdown)
	return s
}

// ServeConn serves one stream until the peer closes it.
func (s *Server) ServeConn(conn net.Conn) {
	s.h2.ServeConn(conn, &http2.ServeConnOpts{Handler: s.mux})
}

// Serve accepts connections from l and serves each in its own goroutine
// until Accept fails.
func (s *Server) Serve(l net.Listener) error {
	for {
		conn, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer conn.Close()
			s.ServeConn(conn)
		}()
	}
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, agentproto.Health{
		Protocol:     agentproto.Version,
		AgentVersion: Version,
		Kernel:       s.cfg.Kernel,
		Cgroups:      s.cfg.CgroupParent != "",
		UptimeMillis: time.Since(s.started).Milliseconds(),
		RSSBytes:     procfs.RSS(os.Getpid()),
	})
}

func (s *Server) handleSync(w http.ResponseWriter, r *http.Request) {
	var req agentproto.Sync
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		http.Error(w, "invalid sync body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := applySync(req, s.cfg.PowerOff != nil); err != nil {
		s.cfg.Logger.Warn("sync failed", "err", err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, struct{}{})
}

func (s *Server) handleShutdown(w http.ResponseWriter, r *http.Request) {
	if s.cfg.PowerOff == nil {
		http.Error(w, "shutdown is not supported by a host-process agent", http.StatusNotImplemented)
		return
	}
	writeJSON(w, struct{}{})
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	go s.cfg.PowerOff()
}

func (s *Server) runID() int {
	return int(runCounter.Add(1))
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	// An error here is a write to a peer that went away; nothing is left
	// to tell it.
	_ = json.NewEncoder(w).Encode(v)
}
