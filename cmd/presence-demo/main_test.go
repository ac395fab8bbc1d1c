package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/internal/demotest"
)

// TestStory runs the native demo as a user would (every process real, on
// loopback) and checks its story: an agent who ignores offers goes Inactive,
// stays Inactive while the others go on breaks and come back, and gets no more
// work, while work keeps flowing to allowed agents only.
func TestStory(t *testing.T) {
	bin := t.TempDir()
	pkgs := []string{"."}
	for _, b := range binaries {
		pkgs = append(pkgs, "../"+b)
	}
	if out, err := exec.Command("go", append([]string{"build", "-o", bin + "/"}, pkgs...)...).CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(filepath.Join(bin, "presence-demo"), "--bin-dir", bin, "--data-dir", t.TempDir(),
		"--setup", "../../deploy/demo.json", "--nats-listen", "127.0.0.1:0", "--agents", "3", "--ignore", "agent-03",
		"--offer-timeout", "500ms", "--handle-time", "300ms", "--work-rate", "8", "--table-every", "0",
		"--break-every", "1s", "--break-for", "300ms")
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	urlc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if rest, ok := strings.CutPrefix(line, "NATS: "); ok {
				urlc <- strings.Fields(rest)[0]
			}
			if testing.Verbose() {
				t.Log(line)
			}
		}
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	})
	var url string
	select {
	case url = <-urlc:
	case err := <-exited:
		t.Fatalf("demo exited early: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("demo printed no NATS address")
	}

	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// Eight breaks between two agents are at least four by one of them, spaced
	// by at least half the break interval plus the break: more than 2 s, longer
	// than the ignorer would last Inactive if it took breaks too.
	demotest.CheckStory(t, nc, "agent-03", "../../deploy/demo.json", demotest.ExpectBreaks(8))

	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("demo did not stop cleanly: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("demo did not stop within 60 s of SIGTERM")
	}
}
