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

// usageOf is each command's usage line (after "presencectl "); an argument
// error names the line of its command, and the usage text lists them all.
var usageOf = map[string]string{
	"presences":         "presences",
	"presence set":      "presence set <presenceId> --name N --base STATUS [--text T] [--description D] [--selectable=false]",
	"presence remove":   "presence remove <presenceId>",
	"settings":          "settings [--default-presence ID|null] [--missed on|off|null] [--rejected on|off|null] [--session-ttl SECONDS|null] [--reconnect-grace SECONDS|null]",
	"agent default":     "agent default <agentId> <presenceId>|null",
	"agent remove":      "agent remove <agentId>",
	"agent login":       "agent login <agentId> [--session S]",
	"agent logout":      "agent logout <agentId> [--session S]",
	"agent heartbeat":   "agent heartbeat <agentId> [--session S]",
	"agent set":         "agent set <agentId> <presenceId>",
	"get":               "get <agentId>",
	"watch":             "watch",
	"workstream set":    "workstream set <workstreamId> --allowed available,busy [--name N]",
	"workstream remove": "workstream remove <workstreamId>",
	"workstreams":       "workstreams",
	"work submit":       "work submit <workstreamId> [--id ID] [--units N]",
	"apply":             "apply <file>",
	"rejected":          "rejected [--limit N]",
	"rejected show":     "rejected show <seq>",
	"rejected replay":   "rejected replay <seq>",
}

const usage = `presencectl: administer and operate presenced

Usage: presencectl [--nats-url URL] [--subject-prefix P] [--json] COMMAND ...
--json (JSON results for scripts) may stand anywhere on the line. Results go to
standard output; this text and errors go to standard error.

Presences and settings:
  presences                                   list every presence
  presence set <presenceId> --name N --base STATUS [--text T] [--description D] [--selectable=false]
  presence remove <presenceId>
  settings [--default-presence ID|null] [--missed on|off|null] [--rejected on|off|null] [--session-ttl SECONDS|null] [--reconnect-grace SECONDS|null]
Agents:
  agent default <agentId> <presenceId>|null   set or clear an agent's default presence
  agent remove <agentId>                      forget an agent
  agent login <agentId> [--session S]
  agent logout <agentId> [--session S]
  agent heartbeat <agentId> [--session S]
  agent set <agentId> <presenceId>            pick a presence for the agent
  get <agentId>                               the agent's current status
  watch                                       live table of status changes (Ctrl-C ends)
Workstreams:
  workstream set <workstreamId> --allowed available,busy [--name N]
  workstream remove <workstreamId>
  workstreams                                 list workstreams
Work (reference router):
  work submit <workstreamId> [--id ID] [--units N]
Setup:
  apply <file>                                publish a whole setup (presences, settings,
                                              agents, workstreams) from a JSON file
Dead letters:
  rejected [--limit N]                        list rejected events
  rejected show <seq>                         one rejected event in full
  rejected replay <seq>                       publish the original event again

Connection flags (each also read from PRESENCED_<FLAG>, as for presenced):
  --nats-url, --nats-user/--nats-password, --nats-token, --nats-creds, --nats-nkey,
  --nats-tls-cert/--nats-tls-key, --nats-tls-ca, --nats-tls-first
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr); err != nil {
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

// run carries out one command. Its results go to out; the usage text goes to
// errOut when asked for, and otherwise with the error (which main prints to
// standard error), so a script reading out never gets usage for a result.
func run(ctx context.Context, args []string, env cmdline.Env, out, errOut io.Writer) error {
	args, asJSON, err := takeJSON(args)
	if err != nil {
		return err
	}
	if wantsHelp(args) {
		fmt.Fprint(errOut, usage)
		return nil
	}
	f := cmdline.NewFlags("presencectl", "", env)
	natsOpts := cmdline.AddNATS(f, nats.DefaultURL)
	prefix := f.String("subject-prefix", "presence", "subject prefix")
	if err := f.Parse(args); err != nil {
		return withUsage(err)
	}
	if f.NArg() == 0 {
		return withUsage(errors.New("no command given"))
	}
	// Arguments are checked before connecting: a mistake is named, with its
	// command's usage, even where no server can be reached.
	action, err := resolve(f.Args())
	if errors.Is(err, errHelp) {
		fmt.Fprint(errOut, usage)
		return nil
	}
	if err != nil {
		return withUsage(err)
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
	c := &cli{out: out, json: asJSON, subj: names.Subjects, names: names, prefix: *prefix, nc: nc, js: js}
	return action(ctx, c)
}

// takeJSON takes --json (or -json, --json=BOOL) out of args wherever it
// stands, up to a "--" that ends the flags: the global flags stop at the
// command and each command parses its own, so it would otherwise count only
// before the command. It therefore cannot be the value of another flag.
func takeJSON(args []string) ([]string, bool, error) {
	out := make([]string, 0, len(args))
	on := false
	for i, a := range args {
		if a == "--" {
			out = append(out, args[i:]...)
			break
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || strings.HasPrefix(a, "---") || name != "json" {
			out = append(out, a)
			continue
		}
		on = true
		if hasValue {
			b, err := strconv.ParseBool(value)
			if err != nil {
				return nil, false, fmt.Errorf("%s: use --json, --json=true or --json=false", a)
			}
			on = b
		}
	}
	return out, on, nil
}

// withUsage puts the whole usage after what went wrong, the specific part
// first, so it is the first thing a reader sees.
func withUsage(err error) error {
	return fmt.Errorf("%w\n\n%s", err, strings.TrimRight(usage, "\n"))
}

// wantsHelp reports -h or --help anywhere before a "--".
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help":
			return true
		}
	}
	return false
}

var (
	errUnknownCommand = errors.New("unknown command")
	errHelp           = errors.New("help asked for")
)

// usageError says what is wrong with the arguments of cmd and shows its usage.
func usageError(cmd, what string) error {
	return fmt.Errorf("%s: %s: presencectl %s", cmd, what, usageOf[cmd])
}

// parseFlags parses a command's own flags; words left over are a mistake.
func parseFlags(fs *flag.FlagSet, cmd string, args []string) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return usageError(cmd, err.Error())
	}
	if fs.NArg() > 0 {
		return usageError(cmd, fmt.Sprintf("unexpected %q", strings.Join(fs.Args(), " ")))
	}
	return nil
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

type action func(ctx context.Context, c *cli) error

// resolve finds the command in a and checks how many arguments it got.
func resolve(a []string) (action, error) {
	cmd, rest := a[0], a[1:]
	sub, args := "", []string(nil)
	if len(rest) > 0 {
		sub, args = rest[0], rest[1:]
	}
	name := cmd + " " + sub
	// first reports whether args starts with a word that is not a flag, as the
	// commands that take an id and then flags need.
	first := func(args []string) bool { return len(args) > 0 && !strings.HasPrefix(args[0], "-") }
	switch cmd {
	case "help":
		return nil, errHelp
	case "presences", "watch", "workstreams":
		if len(rest) != 0 {
			return nil, usageError(cmd, "takes no arguments")
		}
		return map[string]action{
			"presences":   func(ctx context.Context, c *cli) error { return c.presences(ctx) },
			"watch":       func(ctx context.Context, c *cli) error { return c.watch(ctx) },
			"workstreams": func(ctx context.Context, c *cli) error { return c.workstreams(ctx) },
		}[cmd], nil
	case "get":
		if len(rest) != 1 {
			return nil, usageError(cmd, "give an agent id")
		}
		return func(ctx context.Context, c *cli) error { return c.get(ctx, rest[0]) }, nil
	case "apply":
		if len(rest) != 1 {
			return nil, usageError(cmd, "give the setup file")
		}
		return func(ctx context.Context, c *cli) error { return c.apply(ctx, rest[0]) }, nil
	case "settings":
		return func(ctx context.Context, c *cli) error { return c.settings(ctx, rest) }, nil
	case "presence":
		switch sub {
		case "set":
			if !first(args) {
				return nil, usageError(name, "give a presence id first")
			}
			return func(ctx context.Context, c *cli) error { return c.presenceSet(ctx, args) }, nil
		case "remove":
			if len(args) != 1 {
				return nil, usageError(name, "give a presence id")
			}
			return func(ctx context.Context, c *cli) error {
				return c.config(ctx, events.PresenceRemoved, events.PresenceRemovedData{ID: args[0]})
			}, nil
		}
		return nil, fmt.Errorf("presence: use presencectl %s, or presencectl %s", usageOf["presence set"], usageOf["presence remove"])
	case "agent":
		switch sub {
		case "default":
			if len(args) != 2 {
				return nil, usageError(name, "give an agent id and a presence id (or null to clear it)")
			}
			return func(ctx context.Context, c *cli) error {
				var def *string
				if args[1] != "null" {
					def = &args[1]
				}
				return c.config(ctx, events.AgentConfigured, events.AgentConfiguredData{AgentID: args[0], DefaultPresenceID: def})
			}, nil
		case "remove":
			if len(args) != 1 {
				return nil, usageError(name, "give an agent id")
			}
			return func(ctx context.Context, c *cli) error {
				return c.config(ctx, events.AgentRemoved, events.AgentRemovedData{AgentID: args[0]})
			}, nil
		case "login", "logout", "heartbeat":
			if !first(args) {
				return nil, usageError(name, "give an agent id first")
			}
			return func(ctx context.Context, c *cli) error { return c.session(ctx, sub, args) }, nil
		case "set":
			if len(args) != 2 {
				return nil, usageError(name, "give an agent id and a presence id")
			}
			return func(ctx context.Context, c *cli) error {
				return c.send(ctx, events.AgentPresenceSet, args[0], events.PresenceSetData{PresenceID: args[1]})
			}, nil
		}
		return nil, errors.New("agent: use default, remove, login, logout, heartbeat or set, e.g. presencectl " + usageOf["agent set"])
	case "workstream":
		switch sub {
		case "set":
			if !first(args) {
				return nil, usageError(name, "give a workstream id first")
			}
			return func(ctx context.Context, c *cli) error { return c.workstreamSet(ctx, args) }, nil
		case "remove":
			if len(args) != 1 {
				return nil, usageError(name, "give a workstream id")
			}
			return func(ctx context.Context, c *cli) error {
				return c.publishWorkstream(ctx, events.WorkstreamRemoved, events.Workstream{ID: args[0]})
			}, nil
		}
		return nil, fmt.Errorf("workstream: use presencectl %s, or presencectl %s", usageOf["workstream set"], usageOf["workstream remove"])
	case "work":
		if sub != "submit" {
			return nil, errors.New("work: use presencectl " + usageOf["work submit"])
		}
		if !first(args) {
			return nil, usageError(name, "give a workstream id first")
		}
		return func(ctx context.Context, c *cli) error { return c.workSubmit(ctx, args[0], args[1:]) }, nil
	case "rejected":
		switch {
		case sub == "" || strings.HasPrefix(sub, "-"):
			return func(ctx context.Context, c *cli) error { return c.rejectedList(ctx, rest) }, nil
		case sub == "show" || sub == "replay":
			if len(args) != 1 {
				return nil, usageError(name, "give the sequence number that presencectl rejected lists")
			}
			return func(ctx context.Context, c *cli) error { return c.rejectedOne(ctx, sub, args[0]) }, nil
		}
		return nil, fmt.Errorf("rejected: use presencectl %s, presencectl %s or presencectl %s",
			usageOf["rejected"], usageOf["rejected show"], usageOf["rejected replay"])
	}
	return nil, fmt.Errorf("%w %q", errUnknownCommand, strings.Join(a, " "))
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

// presenceSet takes the presence id, then its flags.
func (c *cli) presenceSet(ctx context.Context, args []string) error {
	id := args[0]
	fs := flag.NewFlagSet("presence set", flag.ContinueOnError)
	name := fs.String("name", "", "")
	text := fs.String("text", "", "")
	base := fs.String("base", "", "")
	desc := fs.String("description", "", "")
	sel := fs.Bool("selectable", true, "")
	if err := parseFlags(fs, "presence set", args[1:]); err != nil {
		return err
	}
	if *name == "" || !events.BaseStatus(*base).Valid() {
		return usageError("presence set", "give --name and --base (available, busy, busy_dnd, away or offline)")
	}
	return c.config(ctx, events.PresenceConfigured, map[string]any{"id": id, "name": *name, "text": or(*text, *name),
		"baseStatus": *base, "description": *desc, "selectable": *sel})
}

func (c *cli) settings(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("settings", flag.ContinueOnError)
	def := fs.String("default-presence", "", "")
	missed := fs.String("missed", "", "")
	rejected := fs.String("rejected", "", "")
	ttl := fs.String("session-ttl", "", "")
	grace := fs.String("reconnect-grace", "", "")
	if err := parseFlags(fs, "settings", args); err != nil {
		return err
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
		return usageError("settings", "give at least one of --default-presence, --missed, --rejected, --session-ttl, --reconnect-grace")
	}
	return c.config(ctx, events.SettingsConfigured, data)
}

// session sends agent.login, agent.logout or agent.heartbeat (verb is the
// part after "agent."), taking the agent id and then --session.
func (c *cli) session(ctx context.Context, verb string, args []string) error {
	fs := flag.NewFlagSet("agent "+verb, flag.ContinueOnError)
	s := fs.String("session", "", "")
	if err := parseFlags(fs, "agent "+verb, args[1:]); err != nil {
		return err
	}
	return c.send(ctx, events.Type("agent."+verb), args[0], events.SessionData{SessionID: *s})
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

// workstreamSet takes the workstream id, then its flags.
func (c *cli) workstreamSet(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("workstream set", flag.ContinueOnError)
	name := fs.String("name", "", "")
	allowed := fs.String("allowed", "", "")
	if err := parseFlags(fs, "workstream set", args[1:]); err != nil {
		return err
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
		return usageError("workstream set", "give --allowed with at least one base status")
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
	id := fs.String("id", "", "")
	units := fs.Int("units", 1, "")
	if err := parseFlags(fs, "work submit", args); err != nil {
		return err
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
	limit := fs.Int("limit", 50, "")
	if err := parseFlags(fs, "rejected", args); err != nil {
		return err
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
