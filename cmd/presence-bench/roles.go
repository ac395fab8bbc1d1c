package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/internal/cli"
	"github.com/presenced/presenced/state"
	"github.com/presenced/presenced/worker"
)

// The benchmark runs every side in a process of its own, so each one's CPU
// can be read from /proc: the command re-executes itself in one of these roles.

// serveNATS runs an embedded NATS server with JetStream until SIGTERM.
func serveNATS(dir string) error {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir,
		NoLog: true, NoSigs: true, JetStreamMaxMemory: 1 << 30}
	// PRESENCE_BENCH_NATS_PPROF=<port> serves the server's pprof endpoints, to
	// profile where nats-server spends its time during a run.
	if p, err := strconv.Atoi(os.Getenv("PRESENCE_BENCH_NATS_PPROF")); err == nil && p > 0 {
		opts.ProfPort = p
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return err
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		return fmt.Errorf("nats server not ready")
	}
	fmt.Println("ready", ns.ClientURL())
	// PRESENCE_BENCH_NATS_CPUPROFILE=<prefix> profiles the server during each
	// measured side (the orchestrator signals its start and end), written to
	// <prefix>.<n>.prof, n counting the sides.
	prefix := os.Getenv("PRESENCE_BENCH_NATS_CPUPROFILE")
	sides := 0
	var prof *os.File
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1, syscall.SIGUSR2)
	for s := range sig {
		if s == syscall.SIGTERM || s == syscall.SIGINT {
			break
		}
		if prefix == "" {
			continue
		}
		if s == syscall.SIGUSR1 && prof == nil {
			sides++
			if prof, err = os.Create(fmt.Sprintf("%s.%d.prof", prefix, sides)); err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(prof); err != nil {
				return err
			}
		} else if s == syscall.SIGUSR2 && prof != nil {
			pprof.StopCPUProfile()
			if err := prof.Close(); err != nil {
				return err
			}
			prof = nil
		}
	}
	ns.Shutdown()
	ns.WaitForShutdown()
	return nil
}

// waitGo announces readiness and blocks until the orchestrator says go, so
// connecting and setting up stay out of the measurement.
func waitGo() {
	fmt.Println("ready")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
}

// positiveEnv reads the environment variable name as a positive integer, 0
// when it is unset; what names the unit for the error.
func positiveEnv(name, what string) (int, error) {
	v := os.Getenv(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%s=%q: set it to a positive number of %s, or unset it", name, v, what)
	}
	return n, nil
}

// workerProcs reads PRESENCE_BENCH_WORKER_GOMAXPROCS, the Ps of the measured
// worker (0: Go's default), leaving the servers and the pipes at theirs: a
// worker sharing two cores with the servers spends less on its scheduler with
// fewer.
func workerProcs() (int, error) { return positiveEnv("PRESENCE_BENCH_WORKER_GOMAXPROCS", "Ps") }

// runWorker is presenced itself: the worker package as cmd/presenced wires it,
// with state in Redis.
func runWorker(natsURL, redisURL string, partitions, batch int, window, checkpoint time.Duration, setupOnly bool) error {
	if n, err := workerProcs(); err != nil {
		return err
	} else if n > 0 && !setupOnly {
		runtime.GOMAXPROCS(n)
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	ropts, err := cli.ParseRedisURL(redisURL)
	if err != nil {
		return err
	}
	store := state.NewRedis(redis.NewClient(ropts), state.RedisConfig{})
	defer store.Close()
	// PRESENCE_BENCH_LOG_LEVEL=warn (or info, debug) shows the worker's own
	// logs on stderr; errors only by default, so they do not cost the run.
	level := slog.LevelError
	if v := os.Getenv("PRESENCE_BENCH_LOG_LEVEL"); v != "" {
		if err := level.UnmarshalText([]byte(v)); err != nil {
			return fmt.Errorf("PRESENCE_BENCH_LOG_LEVEL=%q: %w (use debug, info, warn or error)", v, err)
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg := worker.Config{Partitions: partitions, BatchSize: batch, Logger: log, DedupeWindow: window, CheckpointInterval: checkpoint}
	// PRESENCE_BENCH_CHECKPOINT_INPUTS=<n> checkpoints a partition after n inputs
	// instead of the default, to see what checkpoints cost (with a long
	// -checkpoint-interval, a large n leaves them out of a run).
	if n, err := positiveEnv("PRESENCE_BENCH_CHECKPOINT_INPUTS", "inputs"); err != nil {
		return err
	} else if n > 0 {
		cfg.CheckpointInputs = n
	}
	cli.TuneGC(os.LookupEnv) // as cmd/presenced does
	if !setupOnly {
		waitGo()
		// PRESENCE_BENCH_CPUPROFILE=<file> writes a CPU profile of the measured
		// worker, to see where presenced spends its time.
		if path := os.Getenv("PRESENCE_BENCH_CPUPROFILE"); path != "" {
			f, err := os.Create(path)
			if err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
			defer func() {
				pprof.StopCPUProfile()
				_ = f.Close()
			}()
		}
		// PRESENCE_BENCH_MEMPROFILE=<file> writes what the worker allocated.
		if path := os.Getenv("PRESENCE_BENCH_MEMPROFILE"); path != "" {
			runtime.MemProfileRate = 4096
			defer func() {
				if f, err := os.Create(path); err == nil {
					_ = pprof.Lookup("allocs").WriteTo(f, 0)
					_ = f.Close()
				}
			}()
		}
	}
	reg := prometheus.NewRegistry()
	w, err := worker.New(nc, store, cfg, reg, worker.Hooks{})
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if setupOnly {
		// Create the streams, then stop: the load is preloaded before the run.
		done := make(chan error, 1)
		rctx, stop := context.WithCancel(ctx)
		go func() { done <- w.Run(rctx) }()
		for w.Ready(ctx) != nil {
			time.Sleep(10 * time.Millisecond) // polling the readiness probe
		}
		stop()
		return <-done
	}
	err = w.Run(ctx)
	printSteps(reg)
	return err
}

// printSteps says where a batch's time went, step by step, from the worker's
// presenced_batch_step_seconds histogram: the mean per batch, in milliseconds.
func printSteps(reg *prometheus.Registry) {
	families, err := reg.Gather()
	if err != nil {
		return
	}
	line, reads, redo := "", "", ""
	for _, f := range families {
		// A round that stalls says here whether an ack wait ran out
		// (redeliveries) or a batch failed and was retried.
		if n := f.GetName(); n == "presenced_redeliveries_total" || n == "presenced_batch_retries_total" {
			for _, m := range f.GetMetric() {
				redo += fmt.Sprintf(" %s %.0f", strings.TrimSuffix(strings.TrimPrefix(n, "presenced_"), "_total"), m.GetCounter().GetValue())
			}
			continue
		}
		if f.GetName() == "presenced_config_reads_total" {
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					reads += fmt.Sprintf(" %s %.0f", l.GetValue(), m.GetCounter().GetValue())
				}
			}
			continue
		}
		if f.GetName() != "presenced_batch_step_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			h := m.GetHistogram()
			if h.GetSampleCount() == 0 {
				continue
			}
			step := ""
			for _, l := range m.GetLabel() {
				step = l.GetValue()
			}
			line += fmt.Sprintf(" %s %.2f/%s (%d)", step, 1000*h.GetSampleSum()/float64(h.GetSampleCount()), bucketAt(h, 0.99), h.GetSampleCount())
		}
	}
	if line != "" {
		fmt.Fprintf(os.Stderr, "presenced batch steps, mean/p99 ms (batches):%s; configuration reads (proved):%s;%s; worker peak RSS %s\n", line, reads, redo, peakRSS())
	}
}

// bucketAt is the upper bound, in milliseconds, of the histogram bucket that
// holds quantile q: "≤x", or ">x" past the last bucket.
func bucketAt(h *dto.Histogram, q float64) string {
	if h.GetSampleCount() == 0 {
		return "–" // no observation: any bucket would be made up
	}
	want := uint64(math.Ceil(q * float64(h.GetSampleCount())))
	last := 0.0
	for _, b := range h.GetBucket() {
		last = 1000 * b.GetUpperBound()
		if b.GetCumulativeCount() >= want {
			return fmt.Sprintf("≤%g", last)
		}
	}
	return fmt.Sprintf(">%g", last)
}

// casScript is the reference pipeline's one compare-and-set per event.
var casScript = redis.NewScript(`
local cur = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if cur >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'status', ARGV[2])
return 1`)

// runPipe is the reference pipeline: consume a batch, optionally one Lua CAS
// per event (pipelined), publish one output per event with Nats-Msg-Id, wait for
// the acks, ack the batch. single does it one event at a time, synchronously.
func runPipe(natsURL, redisURL, stream string, withLua, single, publish bool, batch int) error {
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4*batch))
	if err != nil {
		return err
	}
	var rc *redis.Client
	if withLua {
		ropts, err := redis.ParseURL(redisURL)
		if err != nil {
			return err
		}
		rc = redis.NewClient(ropts)
		defer rc.Close()
		if err := casScript.Load(context.Background(), rc).Err(); err != nil {
			return err
		}
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	cons, err := js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable: "BENCH_PIPE", AckPolicy: jetstream.AckAllPolicy, MaxAckPending: -1,
	})
	if err != nil {
		return err
	}
	if single {
		batch = 1
	}
	waitGo()
	// Consumed the way presenced consumes: a continuous pull, each batch what
	// has arrived, up to its size. (Fetch per batch was seen to wait forever
	// for the server's end-of-batch status under this load.)
	incoming := make(chan jetstream.Msg, 2*batch)
	cc, err := cons.Consume(func(m jetstream.Msg) { incoming <- m }, jetstream.PullMaxMessages(batch))
	if err != nil {
		return err
	}
	defer cc.Stop()
	out := make([]byte, 0, 512)
	for {
		var got []jetstream.Msg
		select {
		case <-ctx.Done():
			return nil
		case m := <-incoming:
			got = append(got, m)
		}
	fill:
		for len(got) < batch {
			select {
			case m := <-incoming:
				got = append(got, m)
			default:
				break fill
			}
		}
		if withLua {
			pipe := rc.Pipeline()
			for _, m := range got {
				meta, _ := m.Metadata()
				id := m.Headers().Get("ce-subject")
				casScript.EvalSha(ctx, pipe, []string{"bench:{" + id + "}"}, strconv.FormatUint(meta.Sequence.Stream, 10), m.Headers().Get("ce-type"))
				if single {
					if _, err := pipe.Exec(ctx); err != nil {
						return err
					}
				}
			}
			if !single {
				if _, err := pipe.Exec(ctx); err != nil {
					return err
				}
			}
		}
		if publish {
			var last jetstream.PubAckFuture
			for _, m := range got {
				h := m.Headers()
				o := nats.NewMsg("presence.status." + h.Get("ce-subject"))
				o.Header.Set("Nats-Msg-Id", "out-"+h.Get("ce-id"))
				o.Header.Set("ce-specversion", "1.0")
				o.Header.Set("ce-type", "agent.status.changed")
				o.Header.Set("ce-source", "bench")
				o.Header.Set("ce-id", "out-"+h.Get("ce-id"))
				o.Header.Set("Bench-Cause", h.Get("ce-id"))
				out = out[:0]
				out = fmt.Appendf(out, `{"agentId":%q,"presenceId":"available","name":"Available","text":"Available","baseStatus":"available","signedIn":true,"since":%q,"reason":"login","actor":"agent","previous":null,"cause":{"type":%q,"id":%q,"source":"bench"},"version":1}`,
					h.Get("ce-subject"), time.Now().UTC().Format(time.RFC3339Nano), h.Get("ce-type"), h.Get("ce-id"))
				o.Data = append([]byte(nil), out...)
				if single {
					if _, err := js.PublishMsg(ctx, o); err != nil {
						return err
					}
					continue
				}
				if last, err = js.PublishMsgAsync(o); err != nil {
					return err
				}
			}
			if last != nil {
				select {
				case <-js.PublishAsyncComplete():
				case <-ctx.Done():
					return nil
				}
			}
		}
		if single {
			for _, m := range got {
				if err := m.DoubleAck(ctx); err != nil {
					return err
				}
			}
			continue
		}
		if err := got[len(got)-1].Ack(); err != nil {
			return err
		}
	}
}

// peakRSS is the process's peak resident memory (VmHWM), as /proc says it.
func peakRSS() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "unknown"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
