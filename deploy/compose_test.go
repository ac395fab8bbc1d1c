// Tests of the deployment files: docker-compose.yml must load under the Compose
// specification, and the topology it describes must work, run here as
// processes (no Docker engine needed) with the same configuration files,
// commands and environment.
package deploy_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/internal/demotest"
	"github.com/presenced/presenced/internal/testenv"
)

func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	root, _ := filepath.Abs("..")
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root), cli.WithOsEnv, cli.WithName("presenced"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml does not load under the Compose specification: %v", err)
	}
	return p
}

// imageFiles maps the paths the Dockerfile puts in the image to the sources,
// and lists the commands it builds.
func imageFiles(t *testing.T) (copies map[string]string, commands []string) {
	t.Helper()
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	copies = map[string]string{}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "COPY" && !strings.HasPrefix(f[1], "--") && !strings.HasSuffix(f[2], "/") {
			copies[f[2]] = filepath.Join("..", f[1])
		}
		for _, w := range f {
			if c, ok := strings.CutPrefix(w, "./cmd/"); ok {
				commands = append(commands, c)
			}
		}
	}
	return copies, commands
}

func TestComposeFileIsValid(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	want := []string{"admin", "nats", "presenced-1", "presenced-2", "redis", "router", "simulator"}
	if got := slices.Sorted(maps.Keys(p.Services)); !slices.Equal(got, want) {
		t.Fatalf("services %v, want %v", got, want)
	}
	copies, commands := imageFiles(t)
	for name, s := range p.Services {
		if s.Build != nil {
			if _, err := os.Stat(filepath.Join(s.Build.Context, s.Build.Dockerfile)); err != nil {
				t.Errorf("%s: dockerfile: %v", name, err)
			}
			if len(s.Entrypoint) == 0 || !slices.Contains(commands, filepath.Base(s.Entrypoint[0])) {
				t.Errorf("%s: entrypoint %v is not a command the Dockerfile builds (%v)", name, s.Entrypoint, commands)
			}
			for _, arg := range s.Command {
				if strings.HasPrefix(arg, "/") {
					if _, ok := copies[arg]; !ok {
						t.Errorf("%s: %s is not put in the image by the Dockerfile", name, arg)
					}
				}
			}
		}
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind {
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("%s: mounted file: %v", name, err)
				}
			}
		}
	}
	for dst, src := range copies {
		if _, err := os.Stat(src); err != nil {
			t.Errorf("Dockerfile copies %s to %s: %v", src, dst, err)
		}
	}
	r := p.Services["redis"]
	conf := mountSource(t, r, r.Command[1])
	b, _ := os.ReadFile(conf)
	for _, line := range []string{"appendonly yes", "maxmemory-policy noeviction"} {
		if !strings.Contains(string(b), line) {
			t.Errorf("redis.conf lacks %q", line)
		}
	}
}

func mountSource(t *testing.T, s types.ServiceConfig, target string) string {
	t.Helper()
	for _, v := range s.Volumes {
		if v.Target == target {
			return v.Source
		}
	}
	t.Fatalf("%s mounts nothing at %s", s.Name, target)
	return ""
}

// natsLog keeps the server's warnings and errors, where it reports every
// publish or subscription that a user's permissions refuse.
type natsLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *natsLog) add(format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, v...))
}

func (l *natsLog) Noticef(string, ...any)         {}
func (l *natsLog) Debugf(string, ...any)          {}
func (l *natsLog) Tracef(string, ...any)          {}
func (l *natsLog) Warnf(format string, v ...any)  { l.add(format, v...) }
func (l *natsLog) Errorf(format string, v ...any) { l.add(format, v...) }
func (l *natsLog) Fatalf(format string, v ...any) { l.add(format, v...) }

// A violation is what the server refused a user: a subject published to, or
// subscribed to.
type violation struct{ user, subject string }

// The server logs `<conn> - "<client>" - "<account>/user:<name>" - Publish Violation - Subject "<subject>"`.
var violationRe = regexp.MustCompile(`/user:([^"]+)".* (?:Publish|Subscription) Violation - (?:Subject|Reply) "([^"]*)"`)

func (l *natsLog) violations() []violation {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []violation
	for _, line := range l.lines {
		if m := violationRe.FindStringSubmatch(line); m != nil {
			out = append(out, violation{m[1], m[2]})
		}
	}
	return out
}

// startNATS runs the compose nats service's configuration in-process, with the
// service's environment (the passwords), on a free port and a temp store. The
// log reports what the permissions refused.
func startNATS(t *testing.T, p *types.Project) (*server.Server, *natsLog) {
	t.Helper()
	s := p.Services["nats"]
	for k, v := range s.Environment {
		if v != nil {
			t.Setenv(k, *v)
		}
	}
	opts, err := server.ProcessConfigFile(mountSource(t, s, s.Command[1]))
	if err != nil {
		t.Fatalf("deploy/nats.conf: %v", err)
	}
	opts.Host, opts.Port, opts.HTTPPort, opts.StoreDir, opts.NoSigs = "127.0.0.1", -1, 0, t.TempDir(), true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	log := &natsLog{}
	ns.SetLogger(log, false, false)
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server with deploy/nats.conf did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns, log
}

func connectAs(t *testing.T, url, user, password string, errs chan<- error) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.UserInfo(user, password), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errs != nil {
			errs <- err
		}
	}))
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func TestComposeTopologyAsProcesses(t *testing.T) {
	p := loadCompose(t)
	bin := t.TempDir()
	_, commands := imageFiles(t)
	pkgs := []string{}
	for _, c := range commands {
		pkgs = append(pkgs, "../cmd/"+c)
	}
	if out, err := exec.Command("go", append([]string{"build", "-o", bin + "/"}, pkgs...)...).CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ns, natsLog := startNATS(t, p)
	r := p.Services["redis"]
	rd := testenv.StartRedis(t, testenv.WithConfigFile(mountSource(t, r, r.Command[1])))
	natsAddr := strings.TrimPrefix(ns.ClientURL(), "nats://")
	copies, _ := imageFiles(t)
	rewrite := func(v string) string {
		v = strings.ReplaceAll(v, "nats:4222", natsAddr)
		v = strings.ReplaceAll(v, "redis:6379", rd.Addr())
		if strings.HasPrefix(v, "0.0.0.0:") {
			v = "127.0.0.1:0"
		}
		if src, ok := copies[v]; ok {
			v = src
		}
		return v
	}

	logs := t.TempDir()
	started := map[string]bool{"nats": true, "redis": true}
	var running []*exec.Cmd
	exits := map[*exec.Cmd]chan error{}
	t.Cleanup(func() {
		for _, cmd := range slices.Backward(running) {
			_ = cmd.Process.Kill()
			<-exits[cmd]
		}
	})
	// launch starts a service's process as compose would, its output appended
	// to the service's log.
	launch := func(name string, s types.ServiceConfig) (*exec.Cmd, chan error) {
		args := append(slices.Clone(s.Entrypoint[1:]), s.Command...)
		for i := range args {
			args[i] = rewrite(args[i])
		}
		cmd := exec.Command(filepath.Join(bin, filepath.Base(s.Entrypoint[0])), args...)
		cmd.Env = os.Environ()
		for k, v := range s.Environment {
			if v != nil {
				cmd.Env = append(cmd.Env, k+"="+rewrite(*v))
			}
		}
		logf, err := os.OpenFile(filepath.Join(logs, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		exit := make(chan error, 1)
		go func() { exit <- cmd.Wait(); logf.Close() }()
		return cmd, exit
	}
	for len(started) < len(p.Services) {
		progress := false
		for _, name := range slices.Sorted(maps.Keys(p.Services)) {
			s := p.Services[name]
			waiting := slices.ContainsFunc(slices.Collect(maps.Keys(s.DependsOn)), func(d string) bool { return !started[d] })
			if started[name] || waiting {
				continue
			}
			if retries, oneShot := oneShotRetries(t, name, s.Restart); oneShot {
				// A one-shot service (the admin bootstrap) must finish before its
				// dependants; restart: on-failure runs it again, with Docker's
				// back-off, as long as it fails (e.g. started before the workers
				// made the streams).
				backoff := 100 * time.Millisecond
				for attempt := 0; ; attempt++ {
					_, exit := launch(name, s)
					err := <-exit
					if err == nil {
						t.Logf("%s completed after %d restart(s)", name, attempt)
						break
					}
					if attempt == retries {
						out, _ := os.ReadFile(filepath.Join(logs, name+".log"))
						t.Fatalf("%s: %v after %d restart(s)\n%s", name, err, attempt, out)
					}
					time.Sleep(backoff)
					backoff = min(2*backoff, 5*time.Second)
				}
			} else {
				cmd, exit := launch(name, s)
				running = append(running, cmd)
				exits[cmd] = exit
			}
			started[name] = true
			progress = true
		}
		if !progress {
			t.Fatalf("depends_on has a cycle or names a missing service: started %v", slices.Sorted(maps.Keys(started)))
		}
	}

	worker := p.Services["presenced-1"].Environment
	nc := connectAs(t, ns.ClientURL(), *worker["PRESENCED_NATS_USER"], *worker["PRESENCED_NATS_PASSWORD"], nil)
	sim := p.Services["simulator"].Environment
	demotest.CheckStory(t, nc, *sim["PRESENCED_SIM_IGNORE"], "demo.json")

	// Every process ran under its own role's user from nats.conf.
	connz, err := ns.Connz(&server.ConnzOptions{Username: true})
	if err != nil {
		t.Fatal(err)
	}
	users := map[string]bool{}
	for _, c := range connz.Conns {
		users[c.AuthorizedUser] = true
	}
	for _, name := range []string{"presenced-1", "presenced-2", "router", "simulator"} {
		if u := *p.Services[name].Environment["PRESENCED_NATS_USER"]; !users[u] {
			t.Errorf("%s is not connected as its user %q (connected: %v)", name, u, slices.Sorted(maps.Keys(users)))
		}
	}

	// Graceful shutdown: every long-running process exits 0 on SIGTERM.
	for _, cmd := range slices.Backward(running) {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exits[cmd]:
			exits[cmd] <- nil
			if err != nil {
				t.Errorf("%s on SIGTERM: %v\n%s", filepath.Base(cmd.Path), err, tail(logs))
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not stop within 30 s of SIGTERM", filepath.Base(cmd.Path))
		}
	}
	running = nil

	// The roles did their work, startup to shutdown, within nats.conf's
	// permissions: the server refused nothing to anyone.
	for _, v := range natsLog.violations() {
		t.Errorf("nats.conf refused %s %q during the demo", v.user, v.subject)
	}
}

// oneShotRetries tells whether a compose restart policy makes a one-shot
// service ("no", "on-failure[:max]"), and how many times a failure restarts it.
func oneShotRetries(t *testing.T, name, restart string) (int, bool) {
	t.Helper()
	switch {
	case restart == "no":
		return 0, true
	case restart == "on-failure":
		return 10, true
	case strings.HasPrefix(restart, "on-failure:"):
		n, err := strconv.Atoi(strings.TrimPrefix(restart, "on-failure:"))
		if err != nil || n < 0 {
			t.Fatalf("%s: restart %q", name, restart)
		}
		return n, true
	}
	return 0, false
}

func tail(dir string) string {
	var b strings.Builder
	files, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		var lines []string
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		fh.Close()
		fmt.Fprintf(&b, "== %s\n%s\n", filepath.Base(f), strings.Join(lines[max(0, len(lines)-10):], "\n"))
	}
	return b.String()
}

// TestNATSPermissions proves deploy/nats.conf refuses what a role must not do.
func TestNATSPermissions(t *testing.T) {
	p := loadCompose(t)
	ns, _ := startNATS(t, p)
	env := p.Services["nats"].Environment
	pw := func(k string) string { return *env[k] }
	observer := connectAs(t, ns.ClientURL(), "presenced", pw("PRESENCED_WORKER_PASSWORD"), nil)
	for _, tc := range []struct {
		user, password string
		allowed        []string
		denied         []string
	}{
		{"agent-01", pw("PRESENCED_AGENT01_PASSWORD"), []string{"presence.in.agent.agent-01"},
			[]string{"presence.in.agent.agent-02", "presence.in.router.agent-01", "presence.in.config", "presence.status.agent-01"}},
		{"agents", pw("PRESENCED_AGENTS_PASSWORD"), []string{"presence.in.agent.agent-02"},
			[]string{"presence.in.router.agent-02", "presence.in.config", "presence.in.system.agent-02"}},
		{"router", pw("PRESENCED_ROUTER_PASSWORD"), []string{"presence.in.router.agent-01"},
			[]string{"presence.in.agent.agent-01", "presence.in.config", "presence.status.agent-01"}},
		{"admin", pw("PRESENCED_ADMIN_PASSWORD"), []string{"presence.in.config"},
			[]string{"presence.in.agent.agent-01", "presence.in.router.agent-01", "presence.in.system.agent-01"}},
	} {
		t.Run(tc.user, func(t *testing.T) {
			errs := make(chan error, 16)
			nc := connectAs(t, ns.ClientURL(), tc.user, tc.password, errs)
			for _, subj := range tc.denied {
				if err := nc.Publish(subj, []byte("{}")); err != nil {
					t.Fatal(err)
				}
				if err := nc.Flush(); err != nil {
					t.Fatal(err)
				}
				select {
				case err := <-errs:
					if !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(err.Error(), "Permissions Violation") {
						t.Errorf("publish to %s: %v, want a permissions violation", subj, err)
					}
				case <-time.After(5 * time.Second):
					t.Errorf("%s may publish to %s", tc.user, subj)
				}
			}
			for _, subj := range tc.allowed {
				sub, err := observer.SubscribeSync(subj)
				if err != nil {
					t.Fatal(err)
				}
				if err := observer.Flush(); err != nil {
					t.Fatal(err)
				}
				if err := nc.Publish(subj, []byte("{}")); err != nil {
					t.Fatal(err)
				}
				if _, err := sub.NextMsg(5 * time.Second); err != nil {
					t.Errorf("%s could not publish to %s: %v", tc.user, subj, err)
				}
				_ = sub.Unsubscribe()
			}
		})
	}
	if _, err := nats.Connect(ns.ClientURL(), nats.UserInfo("agent-01", "wrong")); err == nil {
		t.Fatal("a wrong password was accepted")
	}

	// The JetStream API: the worker makes the streams; router and admin may read
	// what their roles read, and may not purge, delete or consume the input.
	ctx := context.Background()
	ojs, err := jetstream.New(observer)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"PRESENCE_IN", "PRESENCE_STATUS"} {
		subj := map[string]string{"PRESENCE_IN": "presence.in.>", "PRESENCE_STATUS": "presence.status.>"}[name]
		if _, err := ojs.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subj}}); err != nil {
			t.Fatalf("worker creates %s: %v", name, err)
		}
	}
	for _, tc := range []struct{ user, password string }{
		{"router", pw("PRESENCED_ROUTER_PASSWORD")}, {"admin", pw("PRESENCED_ADMIN_PASSWORD")}, {"agent-01", pw("PRESENCED_AGENT01_PASSWORD")},
	} {
		t.Run(tc.user+"/jetstream", func(t *testing.T) {
			nc := connectAs(t, ns.ClientURL(), tc.user, tc.password, nil)
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			jctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			denied := map[string]func() error{
				"purge the input stream": func() error {
					return ojsStream(jctx, js, "PRESENCE_IN", func(s jetstream.Stream) error { return s.Purge(jctx) })
				},
				"delete the input stream":  func() error { return js.DeleteStream(jctx, "PRESENCE_IN") },
				"delete the status stream": func() error { return js.DeleteStream(jctx, "PRESENCE_STATUS") },
				"consume the input stream": func() error {
					_, err := js.OrderedConsumer(jctx, "PRESENCE_IN", jetstream.OrderedConsumerConfig{})
					return err
				},
			}
			for what, f := range denied {
				if err := f(); err == nil {
					t.Errorf("%s may %s", tc.user, what)
				}
			}
			if tc.user == "agent-01" {
				if _, err := js.Stream(jctx, "PRESENCE_STATUS"); err == nil {
					t.Error("an agent credential may use the JetStream API")
				}
				return
			}
			// What the role needs: follow the status stream (a fresh deadline: the
			// refused requests above ran theirs out).
			jctx, cancel = context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			cons, err := js.OrderedConsumer(jctx, "PRESENCE_STATUS", jetstream.OrderedConsumerConfig{
				FilterSubjects: []string{"presence.status.>"}, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy})
			if err != nil {
				t.Fatalf("%s cannot follow the status stream: %v", tc.user, err)
			}
			if _, err := cons.Info(jctx); err != nil {
				t.Fatalf("%s cannot read its consumer: %v", tc.user, err)
			}
		})
	}
	if n, err := ojs.Stream(ctx, "PRESENCE_IN"); err != nil || n.CachedInfo().Config.Name != "PRESENCE_IN" {
		t.Fatalf("the input stream is gone: %v", err)
	}
}

// ojsStream looks the stream up and runs f on it; a refused lookup is an error too.
func ojsStream(ctx context.Context, js jetstream.JetStream, name string, f func(jetstream.Stream) error) error {
	s, err := js.Stream(ctx, name)
	if err != nil {
		return err
	}
	return f(s)
}
