// Command presenced is the presence worker. With no --nats-url it starts an
// embedded NATS server with JetStream; with no --redis-url it keeps state in memory.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/state"
	"github.com/presenced/presenced/worker"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "presenced:", err)
		os.Exit(1)
	}
}

type options struct {
	natsURL, natsListen, dataDir string
	redisURL, redisPrefix        string
	prefix, source, httpAddr     string
	partitions, batch            int
	dedupe, leaseTTL             time.Duration
	logLevel, logFormat          string
	explicit                     map[string]bool
}

// parse reads flags, each defaulting to its PRESENCED_* environment variable.
func parse(args []string, getenv func(string) string) (options, error) {
	var o options
	fs := flag.NewFlagSet("presenced", flag.ContinueOnError)
	env := func(name, def string) string {
		if v := getenv("PRESENCED_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))); v != "" {
			return v
		}
		return def
	}
	str := func(p *string, name, def, usage string) {
		fs.StringVar(p, name, env(name, def), usage+" (env PRESENCED_"+strings.ToUpper(strings.ReplaceAll(name, "-", "_"))+")")
	}
	str(&o.natsURL, "nats-url", "", "NATS server URL; empty starts an embedded server")
	str(&o.natsListen, "nats-listen", "127.0.0.1:4222", "where the embedded NATS server listens (port 0: any free port)")
	str(&o.dataDir, "data-dir", "presenced-data", "directory of the embedded NATS server's JetStream store")
	str(&o.redisURL, "redis-url", "", "Redis URL (redis://host:port/db); empty keeps state in memory")
	str(&o.redisPrefix, "redis-prefix", "presence", "prefix of every Redis key")
	str(&o.prefix, "subject-prefix", "presence", "prefix of every NATS subject")
	str(&o.source, "source", "presenced", "CloudEvents source of published events, the same on every replica")
	str(&o.httpAddr, "http-addr", "127.0.0.1:8080", "address of /healthz, /readyz and /metrics (empty: off)")
	str(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	str(&o.logFormat, "log-format", "text", "text or json")
	var partitions, batch, dedupe, lease string
	str(&partitions, "partitions", "16", "input partitions; fixed once the input stream exists")
	str(&batch, "batch-size", "500", "most messages one partition handles in one step")
	str(&dedupe, "dedupe-window", "2m", "how long a repeated event source+id has no effect")
	str(&lease, "lease-ttl", "10s", "how long a crashed replica's partitions stay owned")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.explicit = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { o.explicit[f.Name] = true })
	for _, name := range []string{"nats-listen", "http-addr"} {
		if getenv("PRESENCED_"+strings.ToUpper(strings.ReplaceAll(name, "-", "_"))) != "" {
			o.explicit[name] = true
		}
	}
	var err error
	if o.partitions, err = strconv.Atoi(partitions); err != nil || o.partitions < 1 {
		return o, fmt.Errorf("--partitions %q: give a whole number of at least 1", partitions)
	}
	if o.batch, err = strconv.Atoi(batch); err != nil || o.batch < 1 {
		return o, fmt.Errorf("--batch-size %q: give a whole number of at least 1", batch)
	}
	if o.dedupe, err = time.ParseDuration(dedupe); err != nil || o.dedupe <= 0 {
		return o, fmt.Errorf("--dedupe-window %q: give a duration such as 2m", dedupe)
	}
	if o.leaseTTL, err = time.ParseDuration(lease); err != nil || o.leaseTTL < time.Second {
		return o, fmt.Errorf("--lease-ttl %q: give a duration of at least 1s, such as 10s", lease)
	}
	return o, nil
}

func newLogger(o options, out *os.File) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", o.logLevel)
	}
	hopts := &slog.HandlerOptions{Level: level}
	switch o.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(out, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(out, hopts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", o.logFormat)
}

// listenAddr checks that addr is free. A default address that is taken falls
// back to any free port; one the user chose is an error that says what to do.
func listenAddr(addr, flagName string, explicit bool, log *slog.Logger) (string, error) {
	l, err := net.Listen("tcp", addr)
	if err == nil {
		_ = l.Close()
		return addr, nil
	}
	host, _, _ := net.SplitHostPort(addr)
	if explicit {
		return "", fmt.Errorf("cannot listen on %s (%v): free that port, or pass --%s %s:0 for any free port", addr, err, flagName, host)
	}
	log.Warn("default address in use, taking a free port instead", "flag", "--"+flagName, "address", addr)
	return net.JoinHostPort(host, "0"), nil
}

func startEmbeddedNATS(o options, log *slog.Logger) (*server.Server, error) {
	addr, err := listenAddr(o.natsListen, "nats-listen", o.explicit["nats-listen"], log)
	if err != nil {
		return nil, err
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--nats-listen %q: give host:port: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("--nats-listen %q: port must be a number", addr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	storeDir := filepath.Join(o.dataDir, "jetstream")
	if err := os.MkdirAll(storeDir, 0o755); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", o.dataDir, err)
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "presenced-embedded", Host: host, Port: port,
		JetStream: true, StoreDir: storeDir, NoSigs: true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded NATS did not start on %s; pass --nats-listen %s:0 for any free port", addr, host)
	}
	return ns, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout *os.File) error {
	o, err := parse(args, getenv)
	if err != nil {
		return err
	}
	log, err := newLogger(o, stdout)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	natsURL := o.natsURL
	if natsURL == "" {
		ns, err := startEmbeddedNATS(o, log)
		if err != nil {
			return err
		}
		defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
		natsURL = ns.ClientURL()
		log.Info("embedded NATS server with JetStream started: connect with nats --server "+natsURL, "url", natsURL, "store", filepath.Join(o.dataDir, "jetstream"))
	}
	nc, err := nats.Connect(natsURL, nats.Name("presenced"), nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("NATS disconnected", "err", err) }),
		nats.ReconnectHandler(func(*nats.Conn) { log.Info("NATS reconnected") }))
	if err != nil {
		return fmt.Errorf("connect to NATS at %s: %w (is the server running? leave --nats-url empty for an embedded one)", natsURL, err)
	}
	defer nc.Close()

	var store state.Store
	if o.redisURL == "" {
		log.Warn("NO REDIS: state is kept IN MEMORY in this process only; it does not survive a restart and cannot be shared by replicas. Pass --redis-url redis://host:6379/0 for production.")
		store = state.NewMemory()
	} else {
		ropts, err := redis.ParseURL(o.redisURL)
		if err != nil {
			return fmt.Errorf("--redis-url: %w (expected redis://[user:password@]host:port/db)", err)
		}
		rc := redis.NewClient(ropts)
		store = state.NewRedis(rc, state.RedisConfig{Prefix: o.redisPrefix})
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = store.Ping(pctx)
		cancel()
		if err != nil {
			log.Warn("Redis not reachable yet; events wait until it is", "addr", ropts.Addr, "err", err)
		} else {
			log.Info("state in Redis", "addr", ropts.Addr, "prefix", o.redisPrefix)
		}
	}
	defer store.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	w, err := worker.New(nc, store, worker.Config{
		Prefix: o.prefix, Source: o.source, Partitions: o.partitions, BatchSize: o.batch,
		DedupeWindow: o.dedupe, LeaseTTL: o.leaseTTL, Logger: log,
	}, reg, faultHooks(getenv, log))
	if err != nil {
		return err
	}

	if o.httpAddr != "" {
		addr, err := listenAddr(o.httpAddr, "http-addr", o.explicit["http-addr"], log)
		if err != nil {
			return err
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("--http-addr %s: %w", addr, err)
		}
		srv := &http.Server{Handler: httpHandler(w, reg), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(l) }()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
		log.Info("health and metrics", "url", "http://"+l.Addr().String(), "endpoints", "/healthz /readyz /metrics")
	}

	if err := w.Run(ctx); err != nil {
		return err
	}
	if err := nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		log.Warn("drain", "err", err)
	}
	log.Info("bye")
	return nil
}

func httpHandler(w *worker.Worker, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(rw http.ResponseWriter, _ *http.Request) { _, _ = rw.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(rw http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := w.Ready(ctx); err != nil {
			http.Error(rw, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = rw.Write([]byte("ready\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

// faultHooks lets a test kill the process at a precise point with
// PRESENCED_FAULT_KILL_AFTER_COMMITS=n: after the n-th state commit, before its
// status changes are published, the process sends itself SIGKILL.
func faultHooks(getenv func(string) string, log *slog.Logger) worker.Hooks {
	n, err := strconv.Atoi(getenv("PRESENCED_FAULT_KILL_AFTER_COMMITS"))
	if err != nil || n <= 0 {
		return worker.Hooks{}
	}
	log.Warn("fault injection on: the process kills itself after a state commit", "after_commits", n)
	var count atomic.Int64
	return worker.Hooks{AfterCommit: func(context.Context) error {
		if count.Add(1) == int64(n) {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
		return nil
	}}
}
