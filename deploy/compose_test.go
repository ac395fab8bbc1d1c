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
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

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

// startNATS runs the compose nats service's configuration in-process, with the
// service's environment (the passwords), on a free port and a temp store.
func startNATS(t *testing.T, p *types.Project) *server.Server {
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
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server with deploy/nats.conf did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
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
	ns := startNATS(t, p)
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
	for len(started) < len(p.Services) {
		progress := false
		for _, name := range slices.Sorted(maps.Keys(p.Services)) {
			s := p.Services[name]
			waiting := slices.ContainsFunc(slices.Collect(maps.Keys(s.DependsOn)), func(d string) bool { return !started[d] })
			if started[name] || waiting {
				continue
			}
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
			logf, err := os.Create(filepath.Join(logs, name+".log"))
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stdout, cmd.Stderr = logf, logf
			if err := cmd.Start(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			exit := make(chan error, 1)
			go func() { exit <- cmd.Wait(); logf.Close() }()
			if s.Restart == "no" {
				// A one-shot service (the admin bootstrap) must finish before its dependants.
				if err := <-exit; err != nil {
					out, _ := os.ReadFile(logf.Name())
					t.Fatalf("%s: %v\n%s", name, err, out)
				}
			} else {
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
	ns := startNATS(t, p)
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
}
