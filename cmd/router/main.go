// Command router is the reference routing service built on the router package:
// it takes work items, offers each to an eligible agent (longest idle first, as
// pick measures it), waits for an answer, reports missed and declined offers to
// presenced, keeps agents' capacity, and answers the eligibility query of
// contract §8 over NATS and HTTP.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/presenced/presenced/internal/cli"
	"github.com/presenced/presenced/router"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.LookupEnv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "router:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, env cli.Env, out io.Writer) error {
	f := cli.NewFlags("router", "ROUTER", env)
	natsOpts := cli.AddNATS(f, nats.DefaultURL)
	logging := cli.AddLogging(f)
	prefix := f.String("subject-prefix", "presence", "prefix of every NATS subject")
	source := f.String("source", "presence-router", "CloudEvents source of the events the router publishes")
	httpAddr := f.String("http-addr", "", "address of /healthz, /readyz, /metrics and /eligible/<workstreamId> (empty: off)")
	offerTimeout := f.Duration("offer-timeout", 10*time.Second, 100*time.Millisecond, "how long an agent has to answer an offer before it counts as missed")
	hold := f.Duration("hold", 0, 0, "how long an agent who missed or declined is skipped (0: the offer timeout)")
	capacity := f.Int("capacity", 2, 1, "capacity units of each agent")
	if err := f.Parse(args); err != nil {
		return err
	}
	log, err := logging.Logger(out)
	if err != nil {
		return err
	}
	if *hold == 0 {
		*hold = *offerTimeout
	}
	nc, err := natsOpts.Connect("presence-router", log)
	if err != nil {
		return err
	}
	defer nc.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	r, err := router.New(nc, router.Config{Prefix: *prefix, Logger: log})
	if err != nil {
		return err
	}
	reg.MustRegister(router.NewAgentsCollector(r, "presence_router_agents"))
	d, err := newDispatcher(r, nc, dispatchConfig{Prefix: *prefix, Source: *source, OfferTimeout: *offerTimeout, Hold: *hold, Capacity: *capacity}, log, reg)
	if err != nil {
		return err
	}
	if *httpAddr != "" {
		addr, stopHTTP, err := cli.Serve(*httpAddr, httpHandler(r, reg), log)
		if err != nil {
			return err
		}
		defer stopHTTP()
		log.Info("health and metrics", "url", "http://"+addr)
	}

	stopping := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	go func() { errc <- r.Run(ctx) }()
	sub, err := r.Serve()
	if err != nil {
		return fmt.Errorf("serve eligibility query: %w", err)
	}
	go func() { errc <- d.run(ctx) }()
	log.Info("router started", "offer_timeout", *offerTimeout, "capacity", *capacity, "prefix", *prefix)

	var runErr error
	for range 2 {
		// A stop that comes while the router is still setting up cuts those
		// calls short: that is a shutdown like any other, not a failure.
		if err := <-errc; err != nil && runErr == nil && stopping.Err() == nil {
			runErr = err
			cancel()
		}
	}
	_ = sub.Drain()
	if err := nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		log.Warn("drain", "err", err)
	}
	if runErr != nil {
		return runErr
	}
	log.Info("bye")
	return nil
}

// httpHandler serves health, metrics and the eligibility query, which answers
// 503 while the router is still loading, like /readyz.
func httpHandler(r *router.Router, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", cli.HealthHandler(func(context.Context) error { return r.Readiness() }, reg))
	mux.Handle("GET /eligible/{workstreamId}", r.EligibleHandler())
	return mux
}
