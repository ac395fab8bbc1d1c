package testenv

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisCluster is a Redis Cluster of masters only, each a redis-server child process.
type RedisCluster struct {
	Nodes []*Redis
}

// StartRedisCluster starts n redis-server processes with cluster mode on, joins
// them with redis-cli --cluster create (the slots split evenly, no replicas) and
// waits until every node reports cluster_state:ok.
func StartRedisCluster(t testing.TB, n int) *RedisCluster {
	t.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Fatalf("testenv: redis-cli is not on PATH (%v); install redis-server (it brings redis-cli)", err)
	}
	c := &RedisCluster{}
	for range n {
		conf := filepath.Join(t.TempDir(), "nodes.conf")
		c.Nodes = append(c.Nodes, StartRedis(t, WithArgs("--cluster-enabled", "yes", "--cluster-config-file", conf,
			"--cluster-node-timeout", "2000")))
	}
	args := []string{"--cluster", "create"}
	for _, r := range c.Nodes {
		args = append(args, r.Addr())
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("testenv: redis-cli --cluster create: %v\n%s", err, out)
	}
	ctx := context.Background()
	deadline := time.Now().Add(startTimeout)
	for _, r := range c.Nodes {
		cl := redis.NewClient(&redis.Options{Addr: r.Addr()})
		for {
			info, err := cl.ClusterInfo(ctx).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				_ = cl.Close()
				t.Fatalf("testenv: cluster node %s not ok: %v\n%s", r.Addr(), err, info)
			}
			time.Sleep(20 * time.Millisecond) // CLUSTER INFO is the only readiness signal
		}
		_ = cl.Close()
	}
	return c
}

// Addrs lists host:port of every node.
func (c *RedisCluster) Addrs() []string {
	var out []string
	for _, r := range c.Nodes {
		out = append(out, r.Addr())
	}
	return out
}

// URL is the cluster's URL in go-redis's ParseClusterURL form: the first node,
// the others as addr parameters.
func (c *RedisCluster) URL() string {
	u := "redis://" + c.Nodes[0].Addr()
	for i, r := range c.Nodes[1:] {
		sep := "&"
		if i == 0 {
			sep = "?"
		}
		u += sep + "addr=" + r.Addr()
	}
	return u
}

// Client returns a cluster client, closed when the test ends.
func (c *RedisCluster) Client(t testing.TB) *redis.ClusterClient {
	cl := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	t.Cleanup(func() { _ = cl.Close() })
	return cl
}

func (c *RedisCluster) String() string { return fmt.Sprintf("redis cluster %v", c.Addrs()) }
