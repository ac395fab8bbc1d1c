package testenv

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// NATSOption configures StartNATS.
type NATSOption func(*server.Options)

// WithNATSOptions lets a test change the server options before the server starts
// (for example to set accounts or limits). Host, Port and StoreDir are set by
// StartNATS and Restart and should be left alone.
func WithNATSOptions(f func(*server.Options)) NATSOption { return NATSOption(f) }

// NATS is an embedded NATS server with JetStream listening on 127.0.0.1.
type NATS struct {
	t     testing.TB
	opts  []NATSOption
	dir   string // JetStream store directory, kept across Restart
	mu    sync.Mutex
	port  int
	srv   *server.Server
	alive bool
}

// StartNATS starts an embedded NATS server with JetStream on a random loopback
// port and a fresh store directory, and waits until it accepts connections. The
// server is shut down when the test ends.
func StartNATS(t testing.TB, opts ...NATSOption) *NATS {
	t.Helper()
	n := &NATS{t: t, opts: opts, dir: t.TempDir(), port: -1}
	t.Cleanup(n.Shutdown)
	if err := n.start(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return n
}

// Server is the running server.
func (n *NATS) Server() *server.Server {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv
}

// ClientURL is the nats:// URL clients connect to; it stays the same across Restart.
func (n *NATS) ClientURL() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return fmt.Sprintf("nats://127.0.0.1:%d", n.port)
}

// StoreDir is the JetStream store directory (kept across Restart).
func (n *NATS) StoreDir() string { return n.dir }

// Conn returns a connection to the server, closed when the test ends. It
// reconnects forever, every 50ms, so it survives Restart; opts are applied after
// those defaults.
func (n *NATS) Conn(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	all := append([]nats.Option{
		nats.Name(t.Name()),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(50 * time.Millisecond),
	}, opts...)
	nc, err := nats.Connect(n.ClientURL(), all...)
	if err != nil {
		t.Fatalf("testenv: connect to %s: %v", n.ClientURL(), err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Shutdown stops the server and waits until it is down. Shutting down a server
// that is not running does nothing.
func (n *NATS) Shutdown() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.alive {
		return
	}
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
	n.alive = false
}

// Restart shuts the server down if it is running and starts a new one on the
// same port with the same JetStream store, waiting until it accepts connections.
func (n *NATS) Restart() {
	n.t.Helper()
	n.Shutdown()
	if err := n.start(); err != nil {
		n.t.Fatalf("testenv: restart: %v", err)
	}
}

func (n *NATS) start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	o := &server.Options{
		ServerName: "testenv",
		Host:       "127.0.0.1",
		Port:       n.port,
		JetStream:  true,
		StoreDir:   n.dir,
		NoLog:      true,
		NoSigs:     true,
	}
	for _, f := range n.opts {
		f(o)
	}
	o.Host, o.Port, o.StoreDir = "127.0.0.1", n.port, n.dir
	srv, err := server.NewServer(o)
	if err != nil {
		return fmt.Errorf("new nats server: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(startTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return fmt.Errorf("nats server on 127.0.0.1:%d not ready within %v (port in use?)", n.port, startTimeout)
	}
	if n.port <= 0 {
		addr, ok := srv.Addr().(*net.TCPAddr)
		if !ok {
			srv.Shutdown()
			srv.WaitForShutdown()
			return fmt.Errorf("nats server address %v is not TCP", srv.Addr())
		}
		n.port = addr.Port
	}
	n.srv, n.alive = srv, true
	return nil
}
