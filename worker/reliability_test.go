package worker_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/handlers"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/worker"
)

// The reliability suite: each scenario runs real processes and servers, breaks
// something, and reports events in / applied / status changes out / lost /
// duplicated, comparing the status stream with the pure rules replayed over the
// input stream. Lost and duplicated must be 0.
//
// PRESENCED_RELIABILITY=long runs every scenario longer (more kills, longer
// outages, a 60 s soak); PRESENCED_RELIABILITY_REPORT=FILE appends the table
// rows to FILE (docs/reliability.md is made from it).

func longMode() bool { return os.Getenv("PRESENCED_RELIABILITY") == "long" }

func pick[T any](short, long T) T {
	if longMode() {
		return long
	}
	return short
}

var reportMu sync.Mutex

// figures is one scenario's row.
type figures struct {
	in, applied, out, lost, duplicated int
}

// replay is the oracle: the input stream through the pure rules in stream
// order, dropping a repeated source+id as the worker does.
func (e *env) replay() (want map[string][]events.StatusChanged, in, applied int) {
	e.t.Helper()
	ctx := context.Background()
	// Message by message with retries: after a server loss the API answers
	// again once the stream has a leader.
	retry := func(what string, f func() error) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := f()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				e.t.Fatalf("%s: %v", what, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	var stream jetstream.Stream
	var last uint64
	retry("input stream", func() (err error) {
		if stream, err = e.js.Stream(ctx, e.names.InputStream()); err == nil {
			last = stream.CachedInfo().State.LastSeq
		}
		return err
	})
	rules := handlers.Rules{Source: "presenced"}
	cfg := handlers.NewConfig()
	agents := map[string]handlers.Agent{}
	seen := map[string]bool{}
	want = map[string][]events.StatusChanged{}
	for seq := uint64(1); seq <= last; seq++ {
		var m *jetstream.RawStreamMsg
		retry(fmt.Sprintf("input message %d", seq), func() (err error) {
			m, err = stream.GetMsg(ctx, seq)
			return err
		})
		ev, rej := e.subj.Decode(logical(m.Subject), m.Header, m.Data)
		if ev.Type != events.SessionExpired {
			in++
		}
		if rej != nil || ev.Type == events.SessionExpired {
			continue
		}
		if ev.Role == events.RoleConfig {
			ev.Seq, ev.Stored = m.Sequence, m.Time
			if next, err := rules.Configure(cfg, ev); err == nil {
				cfg = next
				applied++
			}
			continue
		}
		key := ev.AgentID + "|" + ev.Source + "|" + ev.ID
		if seen[key] {
			continue
		}
		seen[key] = true
		ev.Seq, ev.Stored = m.Sequence, m.Time
		a, changes, err := rules.Apply(cfg, agents[ev.AgentID], ev)
		if err != nil {
			continue
		}
		applied++
		agents[ev.AgentID] = a
		want[ev.AgentID] = append(want[ev.AgentID], changes...)
	}
	return want, in, applied
}

// settle waits until the status stream holds as many changes as the oracle
// wants (or a deadline passes: then the shortfall is reported as lost).
func (e *env) settle(want map[string][]events.StatusChanged) {
	total := 0
	for _, w := range want {
		total += len(w)
	}
	// Generous: after a cluster node is lost, leader elections and client
	// timeouts take tens of seconds on a loaded machine.
	deadline := time.Now().Add(120 * time.Second)
	timer := time.AfterFunc(120*time.Second, func() { e.status.mu.Lock(); e.status.cond.Broadcast(); e.status.mu.Unlock() })
	defer timer.Stop()
	e.status.mu.Lock()
	defer e.status.mu.Unlock()
	for {
		n := 0
		for _, l := range e.status.byAgent {
			n += len(l)
		}
		if n >= total || time.Now().After(deadline) {
			return
		}
		e.status.cond.Wait()
	}
}

// report compares the output with the oracle, logs the row, appends it to the
// report file and fails the test on any loss, duplicate or difference.
func (e *env) report(scenario string) figures {
	e.t.Helper()
	want, in, applied := e.replay()
	e.settle(want)
	e.status.mu.Lock()
	var f figures
	f.in, f.applied = in, applied
	var diffs []string
	for _, n := range e.status.ids {
		if n > 1 {
			f.duplicated += n - 1
		}
	}
	for _, l := range e.status.byAgent {
		f.out += len(l)
	}
	for agent, w := range want {
		got := e.status.byAgent[agent]
		byVersion := map[uint64]int{}
		for _, st := range got {
			byVersion[st.Version]++
		}
		for i, st := range w {
			v := uint64(i + 1)
			if byVersion[v] == 0 {
				f.lost++
				continue
			}
			if byVersion[v] > 1 {
				f.duplicated += byVersion[v] - 1
			}
			g := got[min(i, len(got)-1)]
			if g.Version != v || g.PresenceID != st.PresenceID || g.Reason != st.Reason || !g.Since.Equal(st.Since) {
				diffs = append(diffs, fmt.Sprintf("%s: got %s, want %s", agent, describe(got), describe(w)))
				break
			}
		}
		if len(got) > len(w) {
			f.duplicated += len(got) - len(w)
		}
	}
	e.status.mu.Unlock()
	row := fmt.Sprintf("| %s | %d | %d | %d | %d | %d |", scenario, f.in, f.applied, f.out, f.lost, f.duplicated)
	e.t.Log("in / applied / out / lost / duplicated: " + row)
	if path := os.Getenv("PRESENCED_RELIABILITY_REPORT"); path != "" {
		reportMu.Lock()
		if fh, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			fmt.Fprintln(fh, row)
			fh.Close()
		}
		reportMu.Unlock()
	}
	if f.lost > 0 || f.duplicated > 0 || len(diffs) > 0 {
		e.t.Fatalf("%s: lost %d, duplicated %d, %d agents differ from the rules: %s", scenario, f.lost, f.duplicated, len(diffs), strings.Join(diffs[:min(3, len(diffs))], "; "))
	}
	if f.out == 0 {
		e.t.Fatalf("%s: nothing came out", scenario)
	}
	return f
}

// load publishes rounds [from, from+rounds) of a mix in which most events change
// status: every agent signs in, is set busy, misses a notification, gets
// capacity, is set available, signs out.
func (e *env) load(prefix string, agents, from, rounds int) {
	e.t.Helper()
	for r := from; r < from+rounds; r++ {
		for i := range agents {
			typ, data := mix(r)
			e.publishRetry(typ, fmt.Sprintf("%s-%d", prefix, i), data)
		}
	}
}

// mix is round r's event of the load.
func mix(r int) (events.Type, any) {
	switch r % 6 {
	case 0:
		return events.AgentLogin, sess{}
	case 1:
		return events.AgentPresenceSet, events.PresenceSetData{PresenceID: "busy"}
	case 2:
		return events.NotificationMissed, events.NotificationData{}
	case 3:
		return events.AgentCapacityChanged, events.CapacityData{Used: r % 3, Total: 2}
	case 4:
		return events.AgentPresenceSet, events.PresenceSetData{PresenceID: "available"}
	default:
		return events.AgentLogout, sess{}
	}
}

// publishRetry publishes, retrying while the NATS server is away.
func (e *env) publishRetry(typ events.Type, agent string, data any) {
	e.t.Helper()
	m := e.input(typ, agent, data)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := e.js.PublishMsg(ctx, m)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("publish %s: %v", m.Subject, err)
		}
		time.Sleep(50 * time.Millisecond) // the server is restarting: retry as a producer would
	}
}

// awaitOutput blocks until at least n status changes have come out.
func (e *env) awaitOutput(n int) {
	e.t.Helper()
	timer := time.AfterFunc(30*time.Second, func() { e.status.mu.Lock(); e.status.cond.Broadcast(); e.status.mu.Unlock() })
	defer timer.Stop()
	deadline := time.Now().Add(30 * time.Second)
	e.status.mu.Lock()
	defer e.status.mu.Unlock()
	for {
		total := 0
		for _, l := range e.status.byAgent {
			total += len(l)
		}
		if total >= n {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("only %d of %d status changes came out", total, n)
		}
		e.status.cond.Wait()
	}
}

// fleet starts n worker processes (extra environment for each) and the status
// collector, once the streams exist.
func (e *env) fleet(n int, extra ...string) []*exec.Cmd {
	e.t.Helper()
	procs := make([]*exec.Cmd, n)
	for i := range procs {
		procs[i] = e.startProcess(extra...)
	}
	e.waitStreams()
	e.noExpiry()
	e.status = e.collect()
	return procs
}

// breakRepeatedly publishes times chunks of two rounds, breaks something once
// at least ten of each chunk's changes are out, then publishes six more rounds.
func (e *env) breakRepeatedly(prefix string, times int, breakIt func()) {
	e.t.Helper()
	for k := range times {
		before := countStatuses(e)
		e.load(prefix, 40, 2*k, 2)
		e.awaitOutput(before + 10)
		breakIt()
	}
	e.load(prefix, 40, 2*times, 6)
}

func kill(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
}

func seeded(t *testing.T) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	t.Logf("random seed %d", seed)
	return rand.New(rand.NewPCG(seed, 1))
}

func TestReliabilityRandomKills(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	procs := []*exec.Cmd{e.startProcess(), e.startProcess(), e.startProcess()}
	e.waitStreams()
	e.noExpiry()
	e.status = e.collect()
	rng := seeded(t)
	kills := pick(6, 40)
	const agents = 40
	for k := range kills {
		// Kill at a random point of the chunk's processing; every chunk yields at
		// least one change per agent.
		before := countStatuses(e)
		e.load("rk", agents, 2*k, 2)
		e.awaitOutput(before + 1 + rng.IntN(agents))
		victim := rng.IntN(len(procs))
		kill(t, procs[victim])
		procs[victim] = e.startProcess()
	}
	e.load("rk", agents, 2*kills, 6)
	e.report(fmt.Sprintf("worker SIGKILLed at random points ×%d, 3 replicas", kills))
}

func TestReliabilityRedisRestartedWithAOF(t *testing.T) {
	t.Parallel()
	e := &env{t: t, nats: testenv.StartNATS(t), redis: testenv.StartRedis(t, testenv.WithAOF())}
	e.init()
	e.fleet(2)
	times := pick(3, 10)
	e.breakRepeatedly("ra", times, func() { e.redis.Kill(); e.redis.Restart() })
	e.report(fmt.Sprintf("Redis SIGKILLed and restarted with AOF ×%d, 2 replicas", times))
}

func TestReliabilityRedisRestartedEmpty(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.fleet(2)
	times := pick(2, 6)
	e.breakRepeatedly("re", times, func() { e.redis.Kill(); e.redis.Restart() }) // no AOF: empty
	e.report(fmt.Sprintf("Redis restarted empty ×%d, 2 replicas (rebuilt from JetStream)", times))
}

func TestReliabilityRedisRestoredFromOlderSnapshot(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startProcess()
	e.startProcess()
	e.waitStreams()
	e.noExpiry()
	e.status = e.collect()
	e.load("ro", 40, 0, 3)
	e.awaitOutput(60)
	rc := e.redis.Client(t)
	if err := rc.Save(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	snapshot, err := os.ReadFile(e.redis.Dir() + "/dump.rdb")
	if err != nil {
		t.Fatal(err)
	}
	// More changes after the snapshot; then Redis comes back from it: rewound.
	before := countStatuses(e)
	e.load("ro", 40, 3, 3)
	e.awaitOutput(before + 40)
	e.redis.Kill()
	if err := os.WriteFile(e.redis.Dir()+"/dump.rdb", snapshot, 0o644); err != nil {
		t.Fatal(err)
	}
	e.redis.Restart()
	if n, err := rc.DBSize(context.Background()).Result(); err != nil || n == 0 {
		t.Fatalf("Redis did not come back from the snapshot: %d keys, %v", n, err)
	}
	e.load("ro", 40, 6, 6)
	e.report("Redis restored from an older snapshot, 2 replicas (rewind detected, rebuilt)")
	// Nothing stale: the read model ends where the status stream ends.
	for i := range 40 {
		a := fmt.Sprintf("ro-%d", i)
		l := e.status.get(a)
		last := l[len(l)-1]
		if rm := e.readModel(a); rm["presenceId"] != last.PresenceID || rm["version"] != fmt.Sprint(last.Version) {
			t.Fatalf("read model of %s = %v, last status %s v%d", a, rm, last.PresenceID, last.Version)
		}
	}
}

func TestReliabilityInMemoryModeKilled(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	memory := "PRESENCED_REDIS_URL=" // empty: state in memory, rebuilt from JetStream at start
	procs := e.fleet(1, memory)
	times := pick(3, 10)
	e.breakRepeatedly("rm", times, func() { kill(t, procs[0]); procs[0] = e.startProcess(memory) })
	e.report(fmt.Sprintf("in-memory mode, worker SIGKILLed and restarted ×%d (rebuilt from JetStream)", times))
}

func TestReliabilityRedisUnavailable(t *testing.T) {
	t.Parallel()
	e := &env{t: t, nats: testenv.StartNATS(t), redis: testenv.StartRedis(t, testenv.WithAOF())}
	e.init()
	e.startProcess()
	e.waitStreams()
	e.noExpiry()
	e.status = e.collect()
	e.load("ru", 30, 0, 2)
	e.awaitOutput(30)
	e.redis.Stop()
	outage := pick(10*time.Second, 30*time.Second)
	done := time.After(outage)
	e.load("ru", 30, 2, 4) // published while Redis is away
	<-done                 // the outage lasts its full length
	e.redis.Restart()
	e.load("ru", 30, 6, 2)
	e.report(fmt.Sprintf("Redis unavailable for %s under load", outage))
	stream, _ := e.js.Stream(context.Background(), e.names.RejectedStream())
	if info, err := stream.Info(context.Background()); err != nil || info.State.Msgs != 0 {
		t.Fatalf("rejections during the outage: %+v %v", info.State, err)
	}
}

func TestReliabilityNATSRestarted(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.fleet(2)
	times := pick(2, 6)
	e.breakRepeatedly("rn", times, e.nats.Restart) // same port, same store directory
	e.report(fmt.Sprintf("NATS server restarted mid-load ×%d (same store), 2 replicas", times))
}

func TestReliabilityNATSClusterLosesNode(t *testing.T) {
	if raceDetector {
		// Three servers, two workers and the race detector's slowdown on a
		// 2-core machine stretch leader elections past every timeout; .ci/run
		// runs this scenario on its own without -race.
		t.Skip("run without -race: go test -run TestReliabilityNATSClusterLosesNode ./worker/")
	}
	cluster := testenv.StartNATSCluster(t, 3)
	e := &env{t: t, redis: testenv.StartRedis(t), natsURL: cluster.URLs()}
	e.nc = cluster.Conn(t)
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	e.js = js
	e.names = worker.NamesFor("presence")
	e.subj = e.names.Subjects
	e.startProcess("PRESENCED_STREAM_REPLICAS=3")
	e.startProcess("PRESENCED_STREAM_REPLICAS=3")
	e.waitStreams()
	e.noExpiry()
	e.status = e.collect()
	e.load("rc", 40, 0, 3)
	e.awaitOutput(60)
	// Every stream the worker made is R3; the node that leads the input stream goes.
	ctx := context.Background()
	var leader string
	for _, name := range []string{e.names.InputStream(), e.names.StatusStream(), e.names.StateStream(), e.names.RejectedStream()} {
		s, err := e.js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		info := s.CachedInfo()
		if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Fatalf("stream %s: %d replicas configured, cluster %+v; want R3", name, info.Config.Replicas, info.Cluster)
		}
		if name == e.names.InputStream() {
			leader = info.Cluster.Leader
		}
	}
	victim := cluster.Index(leader)
	if victim < 0 {
		t.Fatalf("input stream leader %q is not a node of the cluster", leader)
	}
	t.Logf("stopping %s, leader of the input stream", leader)
	cluster.Stop(victim)
	e.load("rc", 40, 3, 6)
	e.report("3-node NATS cluster, R3 streams, the input stream's leader lost mid-load, 2 replicas")
	// The stream has a new leader on a surviving node.
	s, err := e.js.Stream(ctx, e.names.InputStream())
	if err != nil {
		t.Fatal(err)
	}
	if l := s.CachedInfo().Cluster.Leader; l == "" || l == leader {
		t.Fatalf("input stream leader after the loss: %q", l)
	}
}

func TestReliabilityRedisCluster(t *testing.T) {
	t.Parallel()
	rc := testenv.StartRedisCluster(t, 3)
	e := &env{t: t, nats: testenv.StartNATS(t), redisURL: rc.URL()}
	e.init()
	procs := []*exec.Cmd{e.startProcess("PRESENCED_REDIS_CLUSTER=true"), e.startProcess("PRESENCED_REDIS_CLUSTER=true")}
	e.waitStreams()
	e.noExpiry()
	e.status = e.collect()
	e.load("rr", 60, 0, 3)
	e.awaitOutput(60)
	kill(t, procs[0])
	e.startProcess("PRESENCED_REDIS_CLUSTER=true")
	e.load("rr", 60, 3, 6)
	e.report("Redis Cluster (3 masters), 2 replicas, one SIGKILLed")
	keys := 0
	for _, n := range rc.Nodes {
		k, err := n.Client(t).DBSize(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		if k == 0 {
			t.Fatalf("master %s holds no keys: state is not spread over the cluster", n.Addr())
		}
		keys += int(k)
	}
	t.Logf("%d keys over %d masters", keys, len(rc.Nodes))
}

// TestReliabilityDuplicateStorm publishes every event several times (new
// Nats-Msg-Id, same CloudEvents source+id, so JetStream stores every copy), some
// copies long after newer events, while a replica is killed.
func TestReliabilityDuplicateStorm(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	procs := []*exec.Cmd{e.startProcess(), e.startProcess()}
	e.waitStreams()
	e.noExpiry()
	e.status = e.collect()
	rng := seeded(t)
	var sent []*nats.Msg
	copies := pick(3, 10)
	for r := range 6 {
		for i := range 30 {
			a := fmt.Sprintf("rd-%d", i)
			typ, data := []events.Type{events.AgentLogin, events.AgentPresenceSet, events.NotificationMissed, events.AgentCapacityChanged, events.AgentPresenceSet, events.AgentLogout}[r],
				[]any{sess{}, events.PresenceSetData{PresenceID: "busy"}, events.NotificationData{}, events.CapacityData{Used: 1, Total: 2}, events.PresenceSetData{PresenceID: "available"}, sess{}}[r]
			m, err := events.NewInput(e.subj, typ, a, fmt.Sprintf("storm-%d-%d", r, i), "test", data)
			if err != nil {
				t.Fatal(err)
			}
			sent = append(sent, m)
			for c := range copies {
				cp := nats.NewMsg(m.Subject)
				for k, v := range m.Header {
					cp.Header[k] = v
				}
				cp.Header.Set("Nats-Msg-Id", fmt.Sprintf("%s-copy-%d", m.Header.Get("Nats-Msg-Id"), c))
				cp.Data = m.Data
				e.publishMsg(cp)
			}
			// A late copy of an older event, out of order.
			old := sent[rng.IntN(len(sent))]
			late := nats.NewMsg(old.Subject)
			for k, v := range old.Header {
				late.Header[k] = v
			}
			late.Header.Set("Nats-Msg-Id", fmt.Sprintf("late-%d-%d", r, i))
			late.Data = old.Data
			e.publishMsg(late)
		}
		if r == 2 {
			e.awaitOutput(5) // the storm is under way
			kill(t, procs[0])
			procs[0] = e.startProcess()
		}
	}
	e.report(fmt.Sprintf("duplicate storm: every event ×%d plus late copies, a replica killed", copies+1))
}

// TestReliabilityPoisonNeighbours interleaves every kind of bad input with good
// events of the same agents: each bad one becomes a dead letter, none stops or
// changes its neighbours.
func TestReliabilityPoisonNeighbours(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startProcess()
	e.waitStreams()
	e.noExpiry()
	e.status = e.collect()
	poison := 0
	bad := func(subject string, header nats.Header, data []byte) {
		m := nats.NewMsg(subject)
		for k, v := range header {
			m.Header[k] = v
		}
		m.Data = data
		e.publishMsg(m)
		poison++
	}
	for r := range 6 {
		e.load("rp", 20, r, 1)
		for i := range 20 {
			a := fmt.Sprintf("rp-%d", i)
			h := func(typ, subject string) nats.Header {
				return nats.Header{"ce-specversion": {"1.0"}, "ce-id": {fmt.Sprintf("bad-%d-%d-%d", r, i, poison)}, "ce-source": {"fuzz"},
					"ce-type": {typ}, "ce-subject": {subject}, "content-type": {"application/json"}}
			}
			switch (r + i) % 10 {
			case 0:
				bad(e.subj.AgentIn(a), nil, []byte{0xff, 0x00, 0x13, 0x37}) // binary garbage, no headers
			case 1:
				bad(e.subj.AgentIn(a), h("agent.teleport", a), []byte(`{}`)) // unsupported_type
			case 2:
				bad(e.subj.AgentIn(a), h("notification.missed", a), []byte(`{}`)) // wrong_subject
			case 3:
				bad(e.subj.RouterIn(a), h("agent.capacity.changed", a), []byte(`{"used":-1,"total":0}`)) // invalid_data
			case 4:
				bad(e.subj.AgentIn(a), h("agent.login", "someone-else"), []byte(`{}`)) // agent_mismatch
			case 5:
				bad(e.subj.AgentIn(a), h("agent.presence.set", a), []byte(`{"presenceId":"no-such"}`)) // unknown_presence
			case 6:
				bad(e.subj.AgentIn(a), h("agent.presence.set", a), []byte(`{"presenceId":"inactive"}`)) // not_selectable
			case 7:
				bad(e.subj.AgentIn(a), h("agent.login", a), []byte(`{"sessionId":"`+strings.Repeat("x", 70_000)+`"}`)) // too_large
			case 8:
				out := a + "-never-signed-in"
				bad(e.subj.AgentIn(out), h("agent.presence.set", out), []byte(`{"presenceId":"busy"}`)) // not_signed_in
			case 9:
				m, err := events.NewInput(e.subj, events.PresenceRemoved, "", fmt.Sprintf("bad-%d-%d-%d", r, i, poison), "fuzz",
					events.PresenceRemovedData{ID: "away"})
				if err != nil {
					t.Fatal(err)
				}
				bad(m.Subject, m.Header, m.Data) // builtin_immutable
			}
		}
	}
	e.report("poison: every rejection code, garbage and oversized events between good ones")
	stream, _ := e.js.Stream(context.Background(), e.names.RejectedStream())
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := stream.Info(context.Background())
		if err == nil && int(info.State.Msgs) == poison {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead letters: %+v %v, want about %d", info.State, err, poison)
		}
		time.Sleep(50 * time.Millisecond) // dead letters have no completion event
	}
	// Every code of the contract, each dead letter naming the input it rejects.
	codes := map[events.Code]int{}
	for _, r := range e.rejections(poison) {
		codes[r.Code]++
		if r.Subject == "" || r.Message == "" {
			t.Fatalf("dead letter without its subject or message: %+v", r)
		}
	}
	for _, c := range []events.Code{events.CodeMalformed, events.CodeUnsupportedType, events.CodeWrongSubject, events.CodeInvalidData,
		events.CodeAgentMismatch, events.CodeUnknownPresence, events.CodeNotSelectable, events.CodeBuiltinImmutable,
		events.CodeNotSignedIn, events.CodeTooLarge} {
		if codes[c] == 0 {
			t.Errorf("no dead letter with code %s: %v", c, codes)
		}
	}
}

// TestReliabilitySoak measures what a worker process sustains on a preloaded
// backlog, then runs a steady load at half that rate and checks that its heap
// and goroutines (from its own /metrics) stay flat.
func TestReliabilitySoak(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	// A short dedupe window, so the soak reaches the steady state in which entries
	// leave the window as fast as new ones come: flat means flat there.
	env := []string{"PRESENCED_HTTP_ADDR=" + addr, "PRESENCED_DEDUPE_WINDOW=2s"}
	proc := e.startProcess(env...)
	e.waitStreams()
	e.noExpiry()
	e.status = e.collect()

	// The maximum: a backlog published while the worker is stopped, drained by
	// a fresh process, timed from its first handled event to its last.
	if err := proc.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = proc.Wait()
	const agents = 200
	backlog := pick(30, 300) // rounds of one event per agent
	e.loadAsync("rs", agents, 0, backlog)
	e.startProcess(env...)
	total := float64(agents*backlog + 1) // and the settings event
	var first time.Time
	var firstCount float64
	deadline := time.Now().Add(5 * time.Minute)
	for {
		n := scrapeOK(addr).handled
		if n > 0 && first.IsZero() {
			first, firstCount = time.Now(), n
		}
		if n >= total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backlog not drained: %.0f of %.0f handled", n, total)
		}
		time.Sleep(20 * time.Millisecond) // sampling a counter: there is no event for "n handled"
	}
	maxRate := (total - firstCount) / time.Since(first).Seconds()
	rate := int(maxRate / 2)
	t.Logf("drained %.0f events at %.0f events/s; soak at %d events/s", total, maxRate, rate)

	duration := pick(10*time.Second, 60*time.Second)
	start := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var early, late []sample
	round := backlog
	perTick := max(1, rate/10)
	sent := 0
	for i := 0; time.Since(start) < duration; i++ {
		<-tick.C
		// perTick events: whole rounds over a slice of the agents.
		e.loadAsync("rs", min(agents, perTick), round, max(1, perTick/agents))
		sent += min(agents, perTick) * max(1, perTick/agents)
		round += max(1, perTick/agents)
		if i%10 == 0 {
			s := scrape(t, addr)
			switch el := time.Since(start); {
			case el > duration/4 && el < duration/2:
				early = append(early, s)
			case el > 3*duration/4:
				late = append(late, s)
			}
		}
	}
	achieved := float64(sent) / time.Since(start).Seconds()
	e.report(fmt.Sprintf("soak: %.0f events/s (half the measured %.0f) for %s, worker process", achieved, maxRate, duration))
	a, b := mean(early), mean(late)
	t.Logf("heap in use %.0f → %.0f KiB, goroutines %.0f → %.0f", a.heap/1024, b.heap/1024, a.goroutines, b.goroutines)
	if len(early) == 0 || len(late) == 0 || b.heap > a.heap*1.5+8<<20 || b.goroutines > a.goroutines+10 {
		t.Fatalf("not flat: heap %.0f → %.0f KiB, goroutines %.0f → %.0f", a.heap/1024, b.heap/1024, a.goroutines, b.goroutines)
	}
	if achieved < float64(rate)*0.8 {
		t.Logf("the publisher reached %.0f of %d events/s", achieved, rate)
	}
}

// loadAsync publishes rounds like load, without waiting for each
// acknowledgement before the next publish; it returns once all are stored.
func (e *env) loadAsync(prefix string, agents, from, rounds int) {
	e.t.Helper()
	var futures []jetstream.PubAckFuture
	for r := from; r < from+rounds; r++ {
		for i := range agents {
			typ, data := mix(r)
			// More than the client's room for outstanding publishes: waiting for
			// room is flow control (the client's default wait, 200 ms, is too
			// short for a server busy with the rest of the suite).
			f, err := e.js.PublishMsgAsync(e.input(typ, fmt.Sprintf("%s-%d", prefix, i), data), jetstream.WithStallWait(30*time.Second))
			if err != nil {
				e.t.Fatalf("publish: %v", err)
			}
			futures = append(futures, f)
		}
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			e.t.Fatalf("publish %s: %v", f.Msg().Subject, err)
		case <-time.After(30 * time.Second):
			e.t.Fatal("publish: no acknowledgement in 30s")
		}
	}
}

type sample struct{ heap, goroutines, handled float64 }

func mean(l []sample) sample {
	var m sample
	for _, s := range l {
		m.heap += s.heap / float64(len(l))
		m.goroutines += s.goroutines / float64(len(l))
	}
	return m
}

// scrape reads the worker's heap in use, goroutines and events handled from
// its /metrics.
func scrape(t *testing.T, addr string) sample {
	t.Helper()
	s, err := scrapeErr(addr)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// scrapeOK is scrape for a process still starting: a failed scrape reads as zero.
func scrapeOK(addr string) sample {
	s, _ := scrapeErr(addr)
	return s
}

func scrapeErr(addr string) (sample, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return sample{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var s sample
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "go_memstats_heap_inuse_bytes":
			s.heap = v
		case "go_goroutines":
			s.goroutines = v
		case "presenced_event_latency_seconds_count":
			s.handled = v
		}
	}
	return s, nil
}

// noExpiry turns session expiry off: the oracle leaves out the expiry events the
// sweeper publishes (a rebuild gives sessions a fresh lease, so whether one
// applies depends on when the store was lost), and a scenario that runs past
// the session TTL would otherwise see changes the oracle does not.
func (e *env) noExpiry() {
	e.t.Helper()
	e.publishRetry(events.SettingsConfigured, "", map[string]any{"sessionTtlSeconds": 0})
}
