package state_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/handlers"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/state"
)

// redisCPU is the server's user+system CPU time so far.
func redisCPU(b *testing.B, c *redis.Client) time.Duration {
	info, err := c.Info(b.Context(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var sum float64
	for _, l := range strings.Split(info, "\r\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && (k == "used_cpu_user" || k == "used_cpu_sys") {
			f, _ := strconv.ParseFloat(v, 64)
			sum += f
		}
	}
	return time.Duration(sum * float64(time.Second))
}

// BenchmarkRedisCommit commits one status change for each of 500 agents per
// call, as a partition does with a batch, and reports the server's CPU per
// agent next to the client's. With an outbox, each agent's is what a commit
// between checkpoints carries: the change with its cause and previous status,
// and ten dedupe entries not yet saved.
func BenchmarkRedisCommit(b *testing.B) {
	srv := testenv.StartRedis(b)
	seen := make([]state.Seen, 10)
	for k := range seen {
		seen[k] = state.Seen{Key: state.DedupeKey("/agents/desktop", strconv.Itoa(k)), At: time.Date(2026, 11, 24, 9, 0, k, 0, time.UTC)}
	}
	for _, chunk := range []int{1, 20, 100, 250, 500} {
		for _, outbox := range []bool{false, true} {
			b.Run(fmt.Sprintf("chunk=%d/outbox=%v", chunk, outbox), func(b *testing.B) {
				c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
				s := state.NewRedis(c, state.RedisConfig{Prefix: fmt.Sprintf("b%d%v", chunk, outbox), CommitChunk: chunk})
				defer s.Close()
				const agents = 500
				cur := make([]handlers.Agent, agents)
				since := time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC)
				for i := range cur {
					cur[i] = handlers.Agent{ID: fmt.Sprintf("ag-%d", i), PresenceID: "offline", Name: "Offline", Text: "Offline",
						BaseStatus: events.Offline, Since: since, Origin: handlers.OriginSystem, Reason: events.ReasonLogout, Actor: "agent"}
				}
				presences := []events.Presence{events.BuiltinOf(events.Available), events.BuiltinOf(events.Busy), events.BuiltinOf(events.Away)}
				cpu0 := redisCPU(b, c)
				b.ResetTimer()
				seq := uint64(0)
				for n := 0; n < b.N; n++ {
					commits := make([]state.Commit, agents)
					for i := range cur {
						prev := cur[i]
						seq++
						next := prev
						p := presences[(n+i)%len(presences)]
						next.PresenceID, next.Name, next.Text, next.BaseStatus = p.ID, p.Name, p.Text, p.BaseStatus
						next.Since, next.Version, next.AppliedSeq = since.Add(time.Duration(seq)), prev.Version+1, seq
						commits[i] = state.Commit{Agent: next, Expect: prev.AppliedSeq, Before: &prev}
						if outbox {
							st := next.Status()
							st.Reason, st.Actor = events.ReasonManual, "agent"
							st.Previous = &events.Previous{PresenceID: prev.PresenceID, BaseStatus: prev.BaseStatus, Since: prev.Since}
							st.Cause = events.Cause{ID: fmt.Sprintf("0193a5c2-7d1e-7c3b-9f6e-%012d", seq), Source: "/agents/desktop", Type: events.AgentPresenceSet}
							commits[i].Outbox = []state.Outgoing{{ID: events.StatusID(st.Cause, st.AgentID, st.Version), Status: st}}
							commits[i].Seen = seen
						}
						cur[i] = next
					}
					if _, err := s.Commit(b.Context(), 0, commits, nil); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				b.ReportMetric(float64((redisCPU(b, c)-cpu0).Nanoseconds())/1000/float64(b.N*agents), "redis-µs/agent")
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/1000/float64(b.N*agents), "wall-µs/agent")
			})
		}
	}
}
