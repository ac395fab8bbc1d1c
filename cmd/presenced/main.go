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
	"net/url"
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
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/presenced/presenced/internal/cli"
	"github.com/presenced/presenced/router"
	"github.com/presenced/presenced/state"
	"github.com/presenced/presenced/worker"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.LookupEnv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "presenced:", err)
		os.Exit(1)
	}
}

type options struct {
	nats                        cli.NATS
	logging                     cli.Logging
	natsListen, dataDir         string
	redis                       cli.Redis
	redisPrefix                 string
	prefix, source, httpAddr    string
	partitions, batch, replicas int
	dedupe, leaseTTL            time.Duration
	checkpointEvery             time.Duration
	checkpointInputs            int
	agentMetrics                bool
	otlpEndpoint                string
	explicit                    map[string]bool
}

// parse reads flags, each defaulting to its PRESENCED_* environment variable.
func parse(args []string, env cli.Env) (options, error) {
	var o options
	f := cli.NewFlags("presenced", "", env)
	o.nats = cli.AddNATS(f, "")
	o.logging = cli.AddLogging(f)
	natsListen := f.String("nats-listen", "127.0.0.1:4222", "where the embedded NATS server listens, when --nats-url is empty (port 0: any free port)")
	dataDir := f.String("data-dir", "presenced-data", "directory of the embedded NATS server's JetStream store")
	o.redis = cli.AddRedis(f)
	redisPrefix := f.String("redis-prefix", "presence", "prefix of every Redis key")
	prefix := f.String("subject-prefix", "presence", "prefix of every NATS subject")
	source := f.String("source", "presenced", "CloudEvents source of published events, the same on every replica")
	httpAddr := f.String("http-addr", "127.0.0.1:8080", "address of /healthz, /readyz and /metrics (empty: off)")
	partitions := f.Int("partitions", 16, 1, "input partitions; fixed once the input stream exists")
	batch := f.Int("batch-size", 500, 1, "most messages one partition handles in one step")
	dedupe := f.Duration("dedupe-window", 2*time.Minute, time.Second, "how long a repeated event source+id has no effect")
	replicas := f.Int("stream-replicas", 1, 1, "replicas of every stream and bucket presenced creates (3 on a NATS cluster)")
	agentMetrics := f.Bool("agent-metrics", true, "export presenced_agents{base_status} on /metrics by following the status stream (each replica then holds every agent's last status in memory)")
	otlp := f.String("otlp-endpoint", "", "OTLP/HTTP endpoint spans are sent to, e.g. http://localhost:4318 (empty: no spans; traceparent is still carried from inputs to status events)")
	lease := f.Duration("lease-ttl", 10*time.Second, time.Second, "how long a crashed replica's partitions stay owned")
	ckEvery := f.Duration("checkpoint-interval", 30*time.Second, 100*time.Millisecond, "longest time between a busy partition's checkpoints (durable copies a takeover or a rebuild replays from)")
	ckInputs := f.Int("checkpoint-inputs", 20000, 1, "inputs a partition handles between checkpoints at most: bounds what a takeover or a rebuild replays")
	if err := f.Parse(args); err != nil {
		return o, err
	}
	o.natsListen, o.dataDir, o.redisPrefix = *natsListen, *dataDir, *redisPrefix
	o.prefix, o.source, o.httpAddr = *prefix, *source, *httpAddr
	o.partitions, o.batch, o.dedupe, o.leaseTTL, o.replicas = *partitions, *batch, *dedupe, *lease, *replicas
	o.checkpointEvery, o.checkpointInputs = *ckEvery, *ckInputs
	o.agentMetrics, o.otlpEndpoint = *agentMetrics, *otlp
	if u, err := url.Parse(o.otlpEndpoint); o.otlpEndpoint != "" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "") {
		return o, fmt.Errorf("--otlp-endpoint %q: give an http(s) URL such as http://localhost:4318", o.otlpEndpoint)
	}
	o.explicit = map[string]bool{}
	f.Visit(func(fl *flag.Flag) { o.explicit[fl.Name] = true })
	for _, name := range []string{"nats-listen", "http-addr"} {
		if f.IsSet(name) {
			o.explicit[name] = true
		}
	}
	if _, err := o.nats.Options(); err != nil {
		return o, err
	}
	return o, nil
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

func run(ctx context.Context, args []string, env cli.Env, stdout *os.File) error {
	o, err := parse(args, env)
	if err != nil {
		return err
	}
	log, err := o.logging.Logger(stdout)
	if err != nil {
		return err
	}
	cli.TuneGC(env)
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	if *o.nats.URL == "" {
		ns, err := startEmbeddedNATS(o, log)
		if err != nil {
			return err
		}
		defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
		*o.nats.URL = ns.ClientURL()
		log.Info("embedded NATS server with JetStream started: connect with nats --server "+ns.ClientURL(), "url", ns.ClientURL(), "store", filepath.Join(o.dataDir, "jetstream"))
	}
	nc, err := o.nats.Connect("presenced", log)
	if err != nil {
		return fmt.Errorf("%w (leave --nats-url empty for an embedded server)", err)
	}
	defer nc.Close()

	var store state.Store
	if *o.redis.URL == "" {
		log.Warn("NO REDIS: state is kept IN MEMORY in this process only; it does not survive a restart and cannot be shared by replicas. Pass --redis-url redis://host:6379/0 for production.")
		store = state.NewMemory()
	} else {
		rc, where, err := o.redis.Client()
		if err != nil {
			return err
		}
		store = state.NewRedis(rc, state.RedisConfig{Prefix: o.redisPrefix})
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = store.Ping(pctx)
		cancel()
		if err != nil {
			log.Warn("Redis not reachable yet; events wait until it is", "redis", where, "err", err)
		} else {
			log.Info("state in Redis", "redis", where, "prefix", o.redisPrefix)
		}
	}
	defer store.Close()

	tracer, stopTracing, err := tracing(ctx, o.otlpEndpoint, o.source)
	if err != nil {
		return err
	}
	defer stopTracing()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	w, err := worker.New(nc, store, worker.Config{
		Prefix: o.prefix, Source: o.source, Partitions: o.partitions, BatchSize: o.batch,
		DedupeWindow: o.dedupe, LeaseTTL: o.leaseTTL, StreamReplicas: o.replicas, Logger: log, Tracer: tracer,
		CheckpointInterval: o.checkpointEvery, CheckpointInputs: o.checkpointInputs,
	}, reg, faultHooks(env, log))
	if err != nil {
		return err
	}

	if o.agentMetrics {
		// The status stream already holds every agent's last status; following it
		// gives exact counts whichever replica owns which partition.
		view, err := router.New(nc, router.Config{Prefix: o.prefix, Logger: log})
		if err != nil {
			return err
		}
		reg.MustRegister(router.NewAgentsCollector(view, "presenced_agents"))
		vctx, cancel := context.WithCancel(ctx)
		viewDone := make(chan struct{})
		go func() {
			defer close(viewDone)
			// The view starts once the worker has created the streams it follows.
			for w.Ready(vctx) != nil {
				select {
				case <-vctx.Done():
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
			if err := view.Run(vctx); err != nil && vctx.Err() == nil {
				log.Warn("agent metrics off: status stream not followed", "err", err)
			}
		}()
		defer func() { cancel(); <-viewDone }()
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

// tracing returns the tracer spans go through: OTLP/HTTP to endpoint, or none.
func tracing(ctx context.Context, endpoint, source string) (trace.Tracer, func(), error) {
	if endpoint == "" {
		return nil, func() {}, nil
	}
	// A collector's base URL gets the traces path, as OTEL_EXPORTER_OTLP_ENDPOINT does.
	if u, err := url.Parse(endpoint); err == nil && strings.Trim(u.Path, "/") == "" {
		endpoint = strings.TrimSuffix(endpoint, "/") + "/v1/traces"
	}
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(endpoint))
	if err != nil {
		return nil, nil, fmt.Errorf("--otlp-endpoint %s: %w (give a URL such as http://localhost:4318)", endpoint, err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(
		resource.NewSchemaless(attribute.String("service.name", "presenced"), attribute.String("service.instance.id", source))))
	return tp.Tracer("github.com/presenced/presenced/worker"), func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tp.Shutdown(sctx) // flushes the spans still batched
	}, nil
}

func httpHandler(w *worker.Worker, reg *prometheus.Registry) http.Handler {
	return cli.HealthHandler(w.Ready, reg)
}

// faultHooks lets a test kill the process at a precise point with
// PRESENCED_FAULT_KILL_AFTER_COMMITS=n: after the n-th state commit, before its
// status changes are published, the process sends itself SIGKILL.
func faultHooks(env cli.Env, log *slog.Logger) worker.Hooks {
	v, _ := env("PRESENCED_FAULT_KILL_AFTER_COMMITS")
	n, err := strconv.Atoi(v)
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
