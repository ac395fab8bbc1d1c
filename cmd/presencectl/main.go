// Command presencectl is the admin and operator CLI of presenced: presences,
// settings, agent defaults and removal, workstreams, agent actions, status
// queries, a live status table and dead letters.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/events"
	cmdline "github.com/presenced/presenced/internal/cli"
	"github.com/presenced/presenced/router"
	"github.com/presenced/presenced/worker"
)

const usage = `presencectl: administer and operate presenced

Usage: presencectl [--nats-url URL] [--subject-prefix P] [--json] COMMAND ...

Presences and settings:
  presences                                   list every presence
  presence set ID --name N [--text T] --base STATUS [--description D] [--selectable=false]
  presence remove ID
  settings [--default-presence ID|null] [--missed on|off|null] [--rejected on|off|null]
           [--session-ttl SECONDS|null] [--reconnect-grace SECONDS|null]
Agents:
  agent default AGENT PRESENCE|null           set or clear an agent's default presence
  agent remove AGENT                          forget an agent
  agent login|logout|heartbeat AGENT [--session S]
  agent set AGENT PRESENCE                    pick a presence for the agent
  get AGENT                                   the agent's current status
  watch                                       live table of status changes (Ctrl-C ends)
Workstreams:
  workstream set ID --allowed available,busy [--name N]
  workstream remove ID
  workstreams                                 list workstreams
Work (reference router):
  work submit WORKSTREAM [--id ID] [--units N]
Setup:
  apply FILE                                  publish a whole setup (presences, settings,
                                              agents, workstreams) from a JSON file
Dead letters:
  rejected [--limit N]                        list rejected events
  rejected show SEQ                           one rejected event in full
  rejected replay SEQ                         publish the original event again

Connection flags (each also read from PRESENCED_<FLAG>, as for presenced):
  --nats-url, --nats-user/--nats-password, --nats-token, --nats-creds, --nats-nkey,
  --nats-tls-cert/--nats-tls-key, --nats-tls-ca, --nats-tls-first
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.LookupEnv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "presencectl:", err)
		os.Exit(1)
	}
}

type cli struct {
	out    io.Writer
	json   bool
	subj   events.Subjects
	names  worker.Names
	prefix string
	nc     *nats.Conn
	js     jetstream.JetStream
}

func run(ctx context.Context, args []string, env cmdline.Env, out io.Writer) error {
	f := cmdline.NewFlags("presencectl", "", env)
	natsOpts := cmdline.AddNATS(f, nats.DefaultURL)
	prefix := f.String("subject-prefix", "presence", "subject prefix")
	asJSON := f.FlagSet.Bool("json", false, "print JSON for scripts")
	if err := f.Parse(args); err != nil || f.NArg() == 0 {
		fmt.Fprint(out, usage)
		if err != nil {
			return fmt.Errorf("%w (see the usage above)", err)
		}
		return errors.New("no command given (see the usage above)")
	}
	nc, err := natsOpts.Connect("presencectl", slog.New(slog.NewTextHandler(io.Discard, nil)), nats.Timeout(5*time.Second), nats.MaxReconnects(0))
	if err != nil {
		return fmt.Errorf("%w; is presenced running? pass --nats-url or set PRESENCED_NATS_URL to the address it printed", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	names := worker.NamesFor(*prefix)
	c := &cli{out: out, json: *asJSON, subj: names.Subjects, names: names, prefix: *prefix, nc: nc, js: js}
	return c.dispatch(ctx, f.Args())
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (c *cli) dispatch(ctx context.Context, a []string) error {
	cmd, rest := a[0], a[1:]
	sub := ""
	if len(rest) > 0 {
		sub = rest[0]
	}
	switch {
	case cmd == "presences":
		return c.presences(ctx)
	case cmd == "presence" && sub == "set":
		return c.presenceSet(ctx, rest[1:])
	case cmd == "presence" && sub == "remove" && len(rest) == 2:
		return c.config(ctx, events.PresenceRemoved, events.PresenceRemovedData{ID: rest[1]})
	case cmd == "settings":
		return c.settings(ctx, rest)
	case cmd == "agent" && sub == "default" && len(rest) == 3:
		var def *string
		if rest[2] != "null" {
			def = &rest[2]
		}
		return c.config(ctx, events.AgentConfigured, events.AgentConfiguredData{AgentID: rest[1], DefaultPresenceID: def})
	case cmd == "agent" && sub == "remove" && len(rest) == 2:
		return c.config(ctx, events.AgentRemoved, events.AgentRemovedData{AgentID: rest[1]})
	case cmd == "agent" && (sub == "login" || sub == "logout" || sub == "heartbeat"):
		return c.session(ctx, events.Type("agent."+sub), rest[1:])
	case cmd == "agent" && sub == "set" && len(rest) == 3:
		return c.send(ctx, events.AgentPresenceSet, rest[1], events.PresenceSetData{PresenceID: rest[2]})
	case cmd == "get" && len(rest) == 1:
		return c.get(ctx, rest[0])
	case cmd == "watch":
		return c.watch(ctx)
	case cmd == "workstream" && sub == "set":
		return c.workstreamSet(ctx, rest[1:])
	case cmd == "workstream" && sub == "remove" && len(rest) == 2:
		return c.publishWorkstream(ctx, events.WorkstreamRemoved, events.Workstream{ID: rest[1]})
	case cmd == "workstreams":
		return c.workstreams(ctx)
	case cmd == "apply" && len(rest) == 1:
		return c.apply(ctx, rest[0])
	case cmd == "work" && sub == "submit" && len(rest) >= 2:
		return c.workSubmit(ctx, rest[1], rest[2:])
	case cmd == "rejected" && (sub == "" || strings.HasPrefix(sub, "-")):
		return c.rejectedList(ctx, rest)
	case cmd == "rejected" && (sub == "show" || sub == "replay") && len(rest) == 2:
		return c.rejectedOne(ctx, sub, rest[1])
	}
	fmt.Fprint(c.out, usage)
	return fmt.Errorf("unknown command or wrong arguments: %q (see the usage above)", strings.Join(a, " "))
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// send publishes an input event and reports the stream sequence it got. The
// worker answers asynchronously: a rejection shows up under "rejected".
func (c *cli) send(ctx context.Context, typ events.Type, agent string, data any) error {
	m, err := c.build(typ, agent, data)
	if err != nil {
		return err
	}
	ack, err := c.js.PublishMsg(ctx, m)
	if err != nil {
		return fmt.Errorf("publish %s: %w (is presenced running with --subject-prefix %s?)", typ, err, c.prefix)
	}
	return c.print(map[string]any{"type": typ, "subject": m.Subject, "sequence": ack.Sequence},
		fmt.Sprintf("sent %s as sequence %d; see `presencectl rejected` if it has no effect", typ, ack.Sequence))
}

// build makes the event and checks it the way the worker will, so that a
// mistake is reported here, with its fix, instead of as a dead letter.
func (c *cli) build(typ events.Type, agent string, data any) (*nats.Msg, error) {
	m, err := events.NewInput(c.subj, typ, agent, newID(), "presencectl", data)
	if err != nil {
		return nil, err
	}
	if _, rej := c.subj.Decode(m.Subject, m.Header, m.Data); rej != nil {
		return nil, fmt.Errorf("%s would be rejected (%s): %s", typ, rej.Code, rej.Message)
	}
	return m, nil
}

func (c *cli) config(ctx context.Context, typ events.Type, data any) error {
	return c.send(ctx, typ, "", data)
}

func (c *cli) print(v any, human string) error {
	if c.json {
		return json.NewEncoder(c.out).Encode(v)
	}
	_, err := fmt.Fprintln(c.out, human)
	return err
}

func (c *cli) presenceSet(ctx context.Context, args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return errors.New("presence set needs an id first: presencectl presence set training --name 'Away – in training' --base away")
	}
	id := args[0]
	fs := flag.NewFlagSet("presence set", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	name := fs.String("name", "", "")
	text := fs.String("text", "", "")
	base := fs.String("base", "", "")
	desc := fs.String("description", "", "")
	sel := fs.Bool("selectable", true, "")
	if err := fs.Parse(args[1:]); err != nil {
		return fmt.Errorf("presence set: %w", err)
	}
	if *name == "" || !events.BaseStatus(*base).Valid() {
		return errors.New("presence set needs --name and --base (available, busy, busy_dnd, away or offline)")
	}
	return c.config(ctx, events.PresenceConfigured, map[string]any{"id": id, "name": *name, "text": or(*text, *name),
		"baseStatus": *base, "description": *desc, "selectable": *sel})
}

func (c *cli) settings(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("settings", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	def := fs.String("default-presence", "", "")
	missed := fs.String("missed", "", "")
	rejected := fs.String("rejected", "", "")
	ttl := fs.String("session-ttl", "", "")
	grace := fs.String("reconnect-grace", "", "")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("settings: %w", err)
	}
	data := map[string]any{}
	set := func(key, v string, conv func(string) (any, error)) error {
		switch v {
		case "":
			return nil
		case "null":
			data[key] = nil
			return nil
		}
		x, err := conv(v)
		if err != nil {
			return fmt.Errorf("settings %s %q: %w", key, v, err)
		}
		data[key] = x
		return nil
	}
	onOff := func(v string) (any, error) {
		switch v {
		case "on", "true":
			return true, nil
		case "off", "false":
			return false, nil
		}
		return nil, errors.New("use on, off or null")
	}
	secs := func(v string) (any, error) {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return nil, errors.New("use a whole number of seconds (0 turns expiry off) or null")
		}
		return n, nil
	}
	str := func(v string) (any, error) { return v, nil }
	for _, e := range []error{set("defaultPresenceId", *def, str), set("missedNotification", *missed, onOff),
		set("rejectedNotification", *rejected, onOff), set("sessionTtlSeconds", *ttl, secs), set("reconnectGraceSeconds", *grace, secs)} {
		if e != nil {
			return e
		}
	}
	if len(data) == 0 {
		return errors.New("settings needs at least one of --default-presence, --missed, --rejected, --session-ttl, --reconnect-grace")
	}
	return c.config(ctx, events.SettingsConfigured, data)
}

func (c *cli) session(ctx context.Context, typ events.Type, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%s needs an agent id", typ)
	}
	fs := flag.NewFlagSet(string(typ), flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	s := fs.String("session", "", "")
	if err := fs.Parse(args[1:]); err != nil {
		return fmt.Errorf("%s: %w", typ, err)
	}
	return c.send(ctx, typ, args[0], events.SessionData{SessionID: *s})
}

func (c *cli) request(ctx context.Context, subject string) ([]byte, error) {
	m, err := c.nc.RequestWithContext(ctx, subject, nil)
	if errors.Is(err, nats.ErrNoResponders) {
		return nil, fmt.Errorf("nobody answers %s: is presenced running with --subject-prefix %s?", subject, c.prefix)
	}
	if err != nil {
		return nil, fmt.Errorf("request %s: %w", subject, err)
	}
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
		return nil, fmt.Errorf("%s (%s)", m.Header.Get("Nats-Service-Error"), code)
	}
	return m.Data, nil
}

func (c *cli) presences(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	b, err := c.request(ctx, c.subj.QueryPresences())
	if err != nil {
		return err
	}
	var list []events.Presence
	if err := json.Unmarshal(b, &list); err != nil {
		return fmt.Errorf("presences reply: %w", err)
	}
	if c.json {
		return json.NewEncoder(c.out).Encode(list)
	}
	tw := tabwriter.NewWriter(c.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tBASE\tNAME\tTEXT\tSELECTABLE\tBUILT-IN")
	for _, p := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%v\n", p.ID, p.BaseStatus, p.Name, p.Text, p.Selectable, p.Builtin)
	}
	return tw.Flush()
}

func (c *cli) get(ctx context.Context, agent string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	b, err := c.request(ctx, c.subj.QueryAgent(agent))
	if err != nil {
		return fmt.Errorf("agent %s: %w", agent, err)
	}
	var st events.StatusChanged
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("status reply: %w", err)
	}
	return c.print(st, fmt.Sprintf("%s  %s (%s)  signed in: %v  since %s  version %d  reason %s",
		st.AgentID, st.PresenceID, st.BaseStatus, st.SignedIn, st.Since.Format(time.RFC3339), st.Version, st.Reason))
}

// watch prints the last status of every agent, then every change, until interrupted.
func (c *cli) watch(ctx context.Context) error {
	cons, err := c.js.OrderedConsumer(ctx, c.names.StatusStream(), jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return fmt.Errorf("status stream %s: %w (is presenced running?)", c.names.StatusStream(), err)
	}
	if !c.json {
		fmt.Fprintf(c.out, "%-20s %-12s %-9s %-8s %-22s %-8s %s\n", "AGENT", "PRESENCE", "BASE", "SIGNED", "REASON", "VERSION", "SINCE")
	}
	it, err := cons.Messages()
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); it.Stop() }()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		st, err := events.DecodeStatus(&nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
		if err != nil {
			continue
		}
		if c.json {
			_ = json.NewEncoder(c.out).Encode(st)
			continue
		}
		fmt.Fprintf(c.out, "%-20s %-12s %-9s %-8v %-22s %-8d %s\n", st.AgentID, st.PresenceID, st.BaseStatus, st.SignedIn, st.Reason, st.Version, st.Since.Format(time.TimeOnly))
	}
}

func (c *cli) workstreamSet(ctx context.Context, args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return errors.New("workstream set needs an id first: presencectl workstream set chat --allowed available,busy")
	}
	fs := flag.NewFlagSet("workstream set", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	name := fs.String("name", "", "")
	allowed := fs.String("allowed", "", "")
	if err := fs.Parse(args[1:]); err != nil {
		return fmt.Errorf("workstream set: %w", err)
	}
	ws := events.Workstream{ID: args[0], Name: or(*name, args[0])}
	for _, b := range strings.Split(*allowed, ",") {
		if b = strings.TrimSpace(b); b != "" {
			if !events.BaseStatus(b).Valid() {
				return fmt.Errorf("--allowed %q: use base statuses from available, busy, busy_dnd, away, offline", b)
			}
			ws.AllowedBaseStatuses = append(ws.AllowedBaseStatuses, events.BaseStatus(b))
		}
	}
	if len(ws.AllowedBaseStatuses) == 0 {
		return errors.New("workstream set needs --allowed with at least one base status, e.g. --allowed available,busy")
	}
	return c.publishWorkstream(ctx, events.WorkstreamConfigured, ws)
}

func (c *cli) publishWorkstream(ctx context.Context, typ events.Type, ws events.Workstream) error {
	if err := router.EnsureRoutingStream(ctx, c.js, c.prefix); err != nil {
		return err
	}
	m, err := events.NewWorkstreamEvent(c.subj, typ, ws, newID(), "presencectl")
	if err != nil {
		return err
	}
	if _, err := c.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("publish %s: %w", typ, err)
	}
	return c.print(map[string]any{"type": typ, "workstream": ws.ID}, fmt.Sprintf("%s %s", typ, ws.ID))
}

func (c *cli) workSubmit(ctx context.Context, workstream string, args []string) error {
	fs := flag.NewFlagSet("work submit", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	id := fs.String("id", "", "")
	units := fs.Int("units", 1, "")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("work submit: %w (usage: work submit WORKSTREAM [--id ID] [--units N])", err)
	}
	w := events.WorkItem{ID: or(*id, "w-"+newID()), WorkstreamID: workstream, Units: *units}
	if rej := w.Validate(workstream); rej != nil {
		return fmt.Errorf("work submit: %s", rej.Message)
	}
	m, err := events.NewRoutingEvent(c.subj.WorkSubject(workstream), events.WorkSubmitted, "submit-"+w.ID, "presencectl", w)
	if err != nil {
		return err
	}
	if _, err := c.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("publish work item: %w (is the router running? it creates the work stream)", err)
	}
	return c.print(w, fmt.Sprintf("submitted work item %s to %s", w.ID, workstream))
}

func (c *cli) workstreams(ctx context.Context) error {
	if err := router.EnsureRoutingStream(ctx, c.js, c.prefix); err != nil {
		return err
	}
	cons, err := c.js.OrderedConsumer(ctx, router.RoutingStream(c.prefix), jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy})
	if err != nil {
		return err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return err
	}
	var list []events.Workstream
	for range info.NumPending {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			return err
		}
		id := m.Subject()[strings.LastIndexByte(m.Subject(), '.')+1:]
		ws, removed, rej := events.DecodeWorkstream(m.Headers(), m.Data(), id)
		if rej == nil && !removed {
			list = append(list, ws)
		}
	}
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	if c.json {
		if list == nil {
			list = []events.Workstream{}
		}
		return json.NewEncoder(c.out).Encode(list)
	}
	tw := tabwriter.NewWriter(c.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tALLOWED")
	for _, ws := range list {
		var allowed []string
		for _, b := range ws.AllowedBaseStatuses {
			allowed = append(allowed, string(b))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", ws.ID, ws.Name, strings.Join(allowed, ","))
	}
	return tw.Flush()
}

func (c *cli) rejectedStream(ctx context.Context) (jetstream.Stream, error) {
	s, err := c.js.Stream(ctx, c.names.RejectedStream())
	if err != nil {
		return nil, fmt.Errorf("dead-letter stream %s: %w (is presenced running with --subject-prefix %s?)", c.names.RejectedStream(), err, c.prefix)
	}
	return s, nil
}

func (c *cli) rejectedList(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("rejected", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	limit := fs.Int("limit", 50, "")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("rejected: %w", err)
	}
	s, err := c.rejectedStream(ctx)
	if err != nil {
		return err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return err
	}
	type row struct {
		Seq     uint64 `json:"seq"`
		Code    string `json:"code"`
		Subject string `json:"subject"`
		Message string `json:"message"`
	}
	var rows []row
	start := info.State.FirstSeq
	if info.State.Msgs > uint64(*limit) {
		start = info.State.LastSeq - uint64(*limit) + 1
	}
	for seq := start; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		raw, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		r, err := events.DecodeRejected(&nats.Msg{Header: raw.Header, Data: raw.Data})
		if err != nil {
			continue
		}
		rows = append(rows, row{seq, string(r.Code), r.Subject, r.Message})
	}
	if c.json {
		if rows == nil {
			rows = []row{}
		}
		return json.NewEncoder(c.out).Encode(rows)
	}
	tw := tabwriter.NewWriter(c.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tCODE\tSUBJECT\tMESSAGE")
	for _, r := range rows {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", r.Seq, r.Code, r.Subject, r.Message)
	}
	return tw.Flush()
}

func (c *cli) rejectedOne(ctx context.Context, verb, seqArg string) error {
	seq, err := strconv.ParseUint(seqArg, 10, 64)
	if err != nil {
		return fmt.Errorf("rejected %s %q: give the sequence number that `presencectl rejected` lists", verb, seqArg)
	}
	s, err := c.rejectedStream(ctx)
	if err != nil {
		return err
	}
	raw, err := s.GetMsg(ctx, seq)
	if err != nil {
		return fmt.Errorf("dead letter %d: %w", seq, err)
	}
	r, err := events.DecodeRejected(&nats.Msg{Header: raw.Header, Data: raw.Data})
	if err != nil {
		return fmt.Errorf("dead letter %d: %w", seq, err)
	}
	if verb == "show" {
		b, _ := json.MarshalIndent(r, "", "  ")
		_, err := fmt.Fprintln(c.out, string(b))
		return err
	}
	// Replay: the original payload and headers, as new, on the original subject.
	m := nats.NewMsg(r.Subject)
	for k, v := range r.Event.Headers {
		if !strings.EqualFold(k, "Nats-Msg-Id") {
			m.Header[k] = v
		}
	}
	var s64 string
	if json.Unmarshal(r.Event.Data, &s64) == nil && len(r.Event.Data) > 0 && r.Event.Data[0] == '"' {
		// Stored as base64 because it was not JSON: replay the original bytes.
		if b, err := base64.StdEncoding.DecodeString(s64); err == nil {
			m.Data = b
		}
	} else if string(r.Event.Data) != "null" {
		m.Data = r.Event.Data
	}
	ack, err := c.js.PublishMsg(ctx, m)
	if err != nil {
		return fmt.Errorf("replay dead letter %d: %w", seq, err)
	}
	return c.print(map[string]any{"replayed": seq, "sequence": ack.Sequence}, fmt.Sprintf("replayed dead letter %d as input sequence %d", seq, ack.Sequence))
}
