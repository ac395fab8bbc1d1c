// Command presence-demo runs the whole demo topology on this machine with no
// Docker: an embedded NATS server with JetStream, a redis-server with AOF (when
// one is installed), two presenced replicas, the reference router, an admin
// bootstrap and the agent simulator, each a separate process on loopback. It
// narrates every status change and prints a table of the floor.
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/internal/cli"
	"github.com/presenced/presenced/router"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.LookupEnv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "presence-demo:", err)
		os.Exit(1)
	}
}

var binaries = []string{"presenced", "router", "presence-sim", "presencectl"}

type options struct {
	binDir, dataDir, setup, natsListen string
	agents                             int
	ignore                             string
	offerTimeout, handleTime, every    time.Duration
	breakEvery, breakFor               time.Duration
	workRate                           float64
	verbose                            bool
}

func run(ctx context.Context, args []string, env cli.Env, out io.Writer) error {
	f := cli.NewFlags("presence-demo", "DEMO", env)
	var o options
	binDir := f.String("bin-dir", "", "directory holding presenced, router, presence-sim and presencectl (empty: build them with go build)")
	dataDir := f.String("data-dir", "", "where NATS and Redis keep their data and the processes their logs (empty: a new temporary directory)")
	setup := f.String("setup", "deploy/demo.json", "the admin bootstrap applied with presencectl apply")
	natsListen := f.String("nats-listen", "127.0.0.1:4222", "where the embedded NATS server listens (port 0: any free port)")
	agents := f.Int("agents", 6, 1, "simulated agents")
	ignore := f.String("ignore", "agent-06", "agents who never answer offers")
	offerTimeout := f.Duration("offer-timeout", 8*time.Second, 100*time.Millisecond, "how long an agent has to answer an offer")
	handle := f.Duration("handle-time", 6*time.Second, time.Millisecond, "mean time an agent works on an item")
	breakEvery := f.Duration("break-every", 45*time.Second, 0, "mean time between the breaks of the agents who answer offers (0: no breaks)")
	breakFor := f.Duration("break-for", 10*time.Second, time.Millisecond, "how long a break lasts")
	rate := f.Float("work-rate", 1, 0, 1000, "work items per second")
	every := f.Duration("table-every", 10*time.Second, 0, "how often to print the table of agents (0: never)")
	verbose := f.Bool("verbose", false, "copy every process's log to the screen, not just to its log file")
	duration := f.Duration("duration", 0, 0, "stop after this long (0: until Ctrl-C)")
	if err := f.Parse(args); err != nil {
		return err
	}
	o = options{binDir: *binDir, dataDir: *dataDir, setup: *setup, natsListen: *natsListen, agents: *agents, ignore: *ignore,
		offerTimeout: *offerTimeout, handleTime: *handle, breakEvery: *breakEvery, breakFor: *breakFor, workRate: *rate, every: *every, verbose: *verbose}
	if _, err := os.Stat(o.setup); err != nil {
		return fmt.Errorf("--setup %s: %w (run from the repository root, or pass --setup path/to/demo.json)", o.setup, err)
	}
	d := &demo{o: o, out: out}
	defer d.shutdown()
	if err := d.start(ctx); err != nil {
		return err
	}
	if *duration > 0 {
		// Counted from when everything runs, not from the build.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	return d.narrate(ctx)
}

type demo struct {
	o   options
	out io.Writer
	mu  sync.Mutex // guards out

	ns    *server.Server
	redis *exec.Cmd
	procs []*proc
	nc    *nats.Conn
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func (d *demo) say(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintf(d.out, format+"\n", args...)
}

func (d *demo) start(ctx context.Context) error {
	if d.o.dataDir == "" {
		dir, err := os.MkdirTemp("", "presence-demo-")
		if err != nil {
			return err
		}
		d.o.dataDir = dir
	}
	if err := os.MkdirAll(filepath.Join(d.o.dataDir, "logs"), 0o755); err != nil {
		return err
	}
	if d.o.binDir == "" {
		if err := d.build(ctx); err != nil {
			return err
		}
	}
	for _, b := range binaries {
		if _, err := os.Stat(filepath.Join(d.o.binDir, b)); err != nil {
			return fmt.Errorf("--bin-dir %s has no %s: build it with go build -o %s ./cmd/%s", d.o.binDir, b, d.o.binDir, b)
		}
	}
	url, err := d.startNATS()
	if err != nil {
		return err
	}
	d.say("NATS: %s  (watch with: go run ./cmd/presencectl --nats-url %s watch)", url, url)
	d.nc, err = nats.Connect(url, nats.Name("presence-demo"))
	if err != nil {
		return fmt.Errorf("connect to the embedded NATS server: %w", err)
	}
	workers := 2
	redisURL, err := d.startRedis(ctx)
	switch {
	case errors.Is(err, exec.ErrNotFound):
		workers = 1
		d.say("redis-server is not installed: one presenced replica keeps state in memory (apt-get install redis-server for the two-replica topology)")
	case err != nil:
		return err
	default:
		d.say("Redis: %s (AOF on, data in %s)", redisURL, filepath.Join(d.o.dataDir, "redis"))
	}
	env := []string{"PRESENCED_NATS_URL=" + url}
	for i := 1; i <= workers; i++ {
		args := []string{"--http-addr", "127.0.0.1:0", "--log-level", "warn"}
		if redisURL != "" {
			args = append(args, "--redis-url", redisURL)
		}
		if err := d.spawn(fmt.Sprintf("presenced-%d", i), "presenced", env, args...); err != nil {
			return err
		}
	}
	if err := d.runOnce(ctx, "admin", "presencectl", env, "apply", d.o.setup); err != nil {
		return err
	}
	if err := d.spawn("router", "router", env, "--offer-timeout", d.o.offerTimeout.String()); err != nil {
		return err
	}
	if err := d.spawn("simulator", "presence-sim", env, "--agents", strconv.Itoa(d.o.agents), "--ignore", d.o.ignore,
		"--work-rate", strconv.FormatFloat(d.o.workRate, 'g', -1, 64), "--handle-time", d.o.handleTime.String(),
		"--break-every", d.o.breakEvery.String(), "--break-for", d.o.breakFor.String()); err != nil {
		return err
	}
	d.say("demo running: %d presenced replica(s), router, simulator of %d agents (%s ignore offers); logs in %s; Ctrl-C stops",
		workers, d.o.agents, d.o.ignore, filepath.Join(d.o.dataDir, "logs"))
	return nil
}

// build compiles the demo's processes from this module.
func (d *demo) build(ctx context.Context) error {
	d.o.binDir = filepath.Join(d.o.dataDir, "bin")
	d.say("building %s into %s …", strings.Join(binaries, ", "), d.o.binDir)
	pkgs := make([]string, len(binaries))
	for i, b := range binaries {
		pkgs[i] = "github.com/presenced/presenced/cmd/" + b
	}
	cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-o", d.o.binDir + string(filepath.Separator)}, pkgs...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w\n%s(run from the repository, or pass --bin-dir with prebuilt binaries)", err, out)
	}
	return nil
}

func (d *demo) startNATS() (string, error) {
	host, portStr, err := net.SplitHostPort(d.o.natsListen)
	if err != nil {
		return "", fmt.Errorf("--nats-listen %q: give host:port", d.o.natsListen)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return "", fmt.Errorf("--nats-listen %q: the port must be a number", d.o.natsListen)
	}
	if l, err := net.Listen("tcp", d.o.natsListen); err != nil {
		d.say("%s is taken (another NATS?); the demo's NATS takes a free port instead", d.o.natsListen)
		port = -1
	} else {
		_ = l.Close()
	}
	if port == 0 {
		port = -1
	}
	ns, err := server.NewServer(&server.Options{ServerName: "presence-demo", Host: host, Port: port,
		JetStream: true, StoreDir: filepath.Join(d.o.dataDir, "nats"), NoSigs: true})
	if err != nil {
		return "", fmt.Errorf("embedded NATS: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return "", errors.New("embedded NATS did not start; pass --nats-listen 127.0.0.1:0")
	}
	d.ns = ns
	return ns.ClientURL(), nil
}

// startRedis runs redis-server with AOF on a free port.
func (d *demo) startRedis(ctx context.Context) (string, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	dir := filepath.Join(d.o.dataDir, "redis")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	logf, err := os.Create(filepath.Join(d.o.dataDir, "logs", "redis.log"))
	if err != nil {
		return "", err
	}
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
		"--appendonly", "yes", "--save", "", "--daemonize", "no")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start redis-server: %w", err)
	}
	d.redis = cmd
	url := fmt.Sprintf("redis://127.0.0.1:%d/0", port)
	rc := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
	defer rc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for rc.Ping(ctx).Err() != nil {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", fmt.Errorf("redis-server on port %d did not answer; see %s", port, logf.Name())
		}
		time.Sleep(20 * time.Millisecond) // redis-server has no readiness signal but PING
	}
	return url, nil
}

// spawn starts one process of the topology, its output in logs/<name>.log (and
// on the screen with --verbose).
func (d *demo) spawn(name, bin string, env []string, args ...string) error {
	cmd, err := d.command(name, bin, env, args...)
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		close(p.done)
		if err != nil && !d.stopping() {
			d.say("!! %s exited: %v (see its log in %s)", name, err, filepath.Join(d.o.dataDir, "logs"))
		}
	}()
	d.mu.Lock()
	d.procs = append(d.procs, p)
	d.mu.Unlock()
	return nil
}

func (d *demo) runOnce(ctx context.Context, name, bin string, env []string, args ...string) error {
	cmd, err := d.command(name, bin, env, args...)
	if err != nil {
		return err
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w (see %s)", name, err, filepath.Join(d.o.dataDir, "logs", name+".log"))
	}
	d.say("admin: applied %s", d.o.setup)
	return nil
}

func (d *demo) command(name, bin string, env []string, args ...string) (*exec.Cmd, error) {
	logf, err := os.OpenFile(filepath.Join(d.o.dataDir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(d.o.binDir, bin), args...)
	cmd.Env = append(os.Environ(), env...)
	var w io.Writer = logf
	if d.o.verbose {
		w = io.MultiWriter(logf, &prefixed{d: d, prefix: "[" + name + "] "})
	}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = childAttr()
	return cmd, nil
}

type prefixed struct {
	d      *demo
	prefix string
}

func (p *prefixed) Write(b []byte) (int, error) {
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		p.d.say("%s%s", p.prefix, sc.Text())
	}
	return len(b), nil
}

func (d *demo) stopping() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.procs == nil
}

// shutdown stops the processes in reverse order of start (SIGTERM, then
// SIGKILL after 10 s), then Redis and NATS.
func (d *demo) shutdown() {
	d.mu.Lock()
	procs := d.procs
	d.procs = nil
	d.mu.Unlock()
	for _, p := range slices.Backward(procs) {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	if d.redis != nil {
		_ = d.redis.Process.Signal(syscall.SIGTERM)
		_ = d.redis.Wait()
	}
	if d.nc != nil {
		d.nc.Close()
	}
	if d.ns != nil {
		d.ns.Shutdown()
		d.ns.WaitForShutdown()
	}
}

// narrate prints every status change as a sentence and, now and then, the
// table of agents with the offers they got and the work they finished.
func (d *demo) narrate(ctx context.Context) error {
	subj := events.Subjects{}
	var mu sync.Mutex
	offers, done := map[string]int{}, map[string]int{}
	if _, err := d.nc.Subscribe(subj.StatusWildcard(), func(m *nats.Msg) {
		st, err := events.DecodeStatus(m)
		if err != nil {
			return
		}
		from := "—"
		if st.Previous != nil {
			from = st.Previous.PresenceID
		}
		d.say("%s  %-9s %-9s → %-9s (%s, by %s)", time.Now().Format("15:04:05"), st.AgentID, from, st.PresenceID, st.Reason, st.Actor)
	}); err != nil {
		return err
	}
	count := func(into map[string]int) nats.MsgHandler {
		return func(m *nats.Msg) {
			mu.Lock()
			into[m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]]++
			mu.Unlock()
		}
	}
	if _, err := d.nc.Subscribe(subj.OfferSubject("*"), count(offers)); err != nil {
		return err
	}
	if _, err := d.nc.Subscribe(subj.DoneSubject("*"), count(done)); err != nil {
		return err
	}
	r, err := router.New(d.nc, router.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	go func() { _ = r.Run(ctx) }()
	var tick <-chan time.Time
	if d.o.every > 0 {
		t := time.NewTicker(d.o.every)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			d.say("stopping …")
			return nil
		case <-tick:
			mu.Lock()
			d.table(r, offers, done)
			mu.Unlock()
		}
	}
}

func (d *demo) table(r *router.Router, offers, done map[string]int) {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENT\tPRESENCE\tBASE\tSINCE\tOFFERS\tDONE\tMAY TAKE")
	for i := 1; i <= d.o.agents; i++ {
		id := fmt.Sprintf("agent-%02d", i)
		a, ok := r.Agent(id)
		if !ok {
			continue
		}
		var may []string
		for _, ws := range []string{"chat", "voice"} {
			el, _ := r.Eligible(ws)
			if slices.ContainsFunc(el, func(e router.Agent) bool { return e.AgentID == id }) {
				may = append(may, ws)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", id, a.PresenceID, a.BaseStatus, a.Since.Local().Format("15:04:05"),
			offers[id], done[id], strings.Join(may, ","))
	}
	_ = tw.Flush()
	d.say("\n%s", b.String())
}
