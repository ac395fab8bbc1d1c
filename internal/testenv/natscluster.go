package testenv

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// NATSCluster is a cluster of embedded NATS servers with JetStream, routed to
// each other on loopback, each with a store directory of its own.
type NATSCluster struct {
	t     testing.TB
	mu    sync.Mutex
	opts  []*server.Options
	nodes []*server.Server
	alive []bool
}

// StartNATSCluster starts n servers and waits until JetStream has a meta leader.
func StartNATSCluster(t testing.TB, n int) *NATSCluster {
	t.Helper()
	c := &NATSCluster{t: t}
	clientPorts, routePorts := freePorts(t, n), freePorts(t, n)
	var routes []string
	for _, p := range routePorts {
		routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(p))
	}
	for i := range n {
		o := &server.Options{
			ServerName: fmt.Sprintf("node-%d", i), Host: "127.0.0.1", Port: clientPorts[i],
			JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
			Cluster: server.ClusterOpts{Name: "testenv", Host: "127.0.0.1", Port: routePorts[i]},
			Routes:  server.RoutesFromStr(strings.Join(routes, ",")),
		}
		c.opts = append(c.opts, o)
		c.nodes = append(c.nodes, nil)
		c.alive = append(c.alive, false)
	}
	t.Cleanup(c.Shutdown)
	for i := range n {
		c.Start(i)
	}
	deadline := time.Now().Add(2 * startTimeout)
	for {
		current, leader := true, false
		for i := range n {
			current = current && c.nodes[i].JetStreamIsCurrent()
			leader = leader || c.nodes[i].JetStreamIsLeader()
		}
		if current && leader {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatal("testenv: NATS cluster has no JetStream meta leader")
		}
		time.Sleep(20 * time.Millisecond) // the server offers no leader-elected event
	}
}

func freePorts(t testing.TB, n int) []int {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// Start starts node i (again) with its store directory.
func (c *NATSCluster) Start(i int) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.alive[i] {
		return
	}
	o := *c.opts[i]
	srv, err := server.NewServer(&o)
	if err != nil {
		c.t.Fatalf("testenv: node %d: %v", i, err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(startTimeout) {
		c.t.Fatalf("testenv: node %d not ready", i)
	}
	c.nodes[i], c.alive[i] = srv, true
}

// Stop shuts node i down.
func (c *NATSCluster) Stop(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.alive[i] {
		return
	}
	c.nodes[i].Shutdown()
	c.nodes[i].WaitForShutdown()
	c.alive[i] = false
}

// Index returns the index of the node with server name name, or -1.
func (c *NATSCluster) Index(name string) int {
	for i, o := range c.opts {
		if o.ServerName == name {
			return i
		}
	}
	return -1
}

// Shutdown stops every node.
func (c *NATSCluster) Shutdown() {
	for i := range c.nodes {
		c.Stop(i)
	}
}

// URLs is every node's client URL, comma separated, as clients take them.
func (c *NATSCluster) URLs() string {
	var urls []string
	for _, o := range c.opts {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", o.Port))
	}
	return strings.Join(urls, ",")
}

// Conn connects to the cluster (any node), reconnecting for ever; closed when the test ends.
func (c *NATSCluster) Conn(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(c.URLs(), nats.Name(t.Name()), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("testenv: connect to cluster: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}
