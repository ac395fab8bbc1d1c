// Package testenv starts real servers for tests: a redis-server child process and
// an embedded NATS server with JetStream. Tests in presenced never use mocks of
// Redis or NATS; they use these.
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// startTimeout bounds how long a server may take to answer after it is started.
const startTimeout = 15 * time.Second

// RedisOption configures StartRedis.
type RedisOption func(*redisOptions)

type redisOptions struct {
	aof  bool
	conf string
	args []string
}

// WithAOF turns on the append-only file with fsync on every write
// (--appendonly yes --appendfsync always), so data survives Kill and Restart.
func WithAOF() RedisOption { return func(o *redisOptions) { o.aof = true } }

// WithConfigFile starts the server from a redis.conf (its persistence settings
// included); the port, bind address and directory are still the test's own.
func WithConfigFile(path string) RedisOption { return func(o *redisOptions) { o.conf = path } }

// WithArgs appends command-line settings, e.g. "--requirepass", "secret".
func WithArgs(args ...string) RedisOption {
	return func(o *redisOptions) { o.args = append(o.args, args...) }
}

// Redis is a redis-server child process listening on 127.0.0.1.
type Redis struct {
	t    testing.TB
	opts redisOptions
	port int
	dir  string // data directory
	log  string // stdout/stderr of the process, appended across restarts

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
}

// StartRedis starts redis-server on a free loopback port with a fresh data
// directory and waits until it answers PING. The server is killed when the test
// ends. Without redis-server on PATH the test fails with the fix.
func StartRedis(t testing.TB, opts ...RedisOption) *Redis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("testenv: redis-server is not on PATH (%v); install redis-server: apt-get install -y redis-server", err)
	}
	r := &Redis{t: t, dir: t.TempDir()}
	for _, o := range opts {
		o(&r.opts)
	}
	r.log = filepath.Join(t.TempDir(), "redis.log")
	t.Cleanup(r.Kill)

	// Another process may grab the free port between choosing and binding it;
	// try a few ports before giving up.
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if r.port, err = freePort(); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		if err = r.start(); err == nil {
			return r
		}
		if !strings.Contains(r.logTail(), "Address already in use") {
			break
		}
	}
	t.Fatalf("testenv: %v", err)
	return nil
}

// Addr is host:port of the server.
func (r *Redis) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// URL is the server's redis:// URL for database 0.
func (r *Redis) URL() string { return "redis://" + r.Addr() + "/0" }

// Dir is the server's data directory (kept across Restart).
func (r *Redis) Dir() string { return r.dir }

// Client returns a new client of the server, closed when the test ends. It
// reconnects by itself after Restart.
func (r *Redis) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Kill sends SIGKILL to the server and waits for it to exit. Without AOF all its
// data is lost. Killing a server that is not running does nothing.
func (r *Redis) Kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.done
	r.cmd = nil
}

// Stop shuts the server down gracefully (SIGTERM; with AOF it flushes the file)
// and waits for it to exit. Stopping a server that is not running does nothing.
func (r *Redis) Stop() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(startTimeout):
		_ = r.cmd.Process.Kill()
		<-r.done
		r.cmd = nil
		r.t.Fatalf("testenv: redis-server on %s did not stop within %v; killed it\n%s", r.Addr(), startTimeout, r.logTail())
	}
	r.cmd = nil
}

// Restart starts the server again on the same port and data directory and waits
// until it answers PING. A server that is still running is killed first (SIGKILL);
// call Stop before for a graceful restart.
func (r *Redis) Restart() {
	r.t.Helper()
	r.Kill()
	if err := r.start(); err != nil {
		r.t.Fatalf("testenv: restart: %v", err)
	}
}

// start runs redis-server and waits for PING.
func (r *Redis) start() error {
	var args []string
	if r.opts.conf != "" {
		args = append(args, r.opts.conf)
	}
	args = append(args,
		"--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1",
		"--dir", r.dir,
		"--save", "",
		"--daemonize", "no",
	)
	switch {
	case r.opts.conf != "":
	case r.opts.aof:
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	default:
		args = append(args, "--appendonly", "no")
	}
	args = append(args, r.opts.args...)
	logf, err := os.OpenFile(r.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("redis log: %w", err)
	}
	defer logf.Close()

	cmd := exec.Command("redis-server", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	r.mu.Lock()
	r.cmd, r.done = cmd, done
	r.mu.Unlock()

	if err := r.waitPing(done); err != nil {
		r.Kill()
		return fmt.Errorf("redis-server on %s: %w\nredis log:\n%s", r.Addr(), err, r.logTail())
	}
	return nil
}

// waitPing polls PING until it answers, the process exits or the deadline passes.
func (r *Redis) waitPing(exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c := redis.NewClient(&redis.Options{
		Addr: r.Addr(), MaxRetries: -1, DialerRetries: 1, DialTimeout: time.Second,
		ReadTimeout: time.Second, WriteTimeout: time.Second,
	})
	defer c.Close()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		// NOAUTH: the server is up and wants a password.
		if last = c.Ping(ctx).Err(); last == nil || redis.HasErrorPrefix(last, "NOAUTH") {
			return nil
		}
		select {
		case <-exited:
			return errors.New("redis-server exited before answering PING")
		case <-ctx.Done():
			return fmt.Errorf("no answer to PING within %v: %w", startTimeout, last)
		case <-tick.C:
		}
	}
}

// logTail returns the end of the server's log.
func (r *Redis) logTail() string {
	b, err := os.ReadFile(r.log)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	const max = 4096
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(bytes.TrimSpace(b))
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
