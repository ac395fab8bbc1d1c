// Package cli holds what every presenced command shares: flags that default to
// PRESENCED_* environment variables, the logger, and how to reach NATS
// (including credentials and TLS), so each option is spelled and checked once.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Flags is a flag set whose flags default to environment variables: for flag
// "offer-timeout" of a command with scope "ROUTER" it reads
// PRESENCED_ROUTER_OFFER_TIMEOUT, then PRESENCED_OFFER_TIMEOUT.
type Flags struct {
	*flag.FlagSet
	scope string
	env   Env
	errs  []error
	after []func() error
}

// Env looks up an environment variable, as os.LookupEnv does: a variable set to
// the empty string is set (PRESENCED_HTTP_ADDR= turns the HTTP server off).
type Env func(string) (string, bool)

// NoEnv is an empty environment.
func NoEnv(string) (string, bool) { return "", false }

// NewFlags starts a flag set for command name; scope ("" for none) names its
// own environment variables.
func NewFlags(name, scope string, env Env) *Flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &Flags{FlagSet: fs, scope: scope, env: env}
}

// IsSet reports whether one of the environment variables of flag name is set.
func (f *Flags) IsSet(name string) bool {
	_, _, ok := f.lookup(name)
	return ok
}

// EnvName is the first environment variable flag name reads.
func (f *Flags) EnvName(name string) string {
	key := strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
	if f.scope != "" {
		return "PRESENCED_" + f.scope + "_" + key
	}
	return "PRESENCED_" + key
}

// lookup returns the value of the first environment variable of flag name that
// is set (the scoped one first), its name, and whether one is set; unset, the
// name is the first one it reads.
func (f *Flags) lookup(name string) (string, string, bool) {
	key := strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
	names := []string{"PRESENCED_" + key}
	if f.scope != "" {
		names = append([]string{"PRESENCED_" + f.scope + "_" + key}, names...)
	}
	for _, n := range names {
		if v, ok := f.env(n); ok {
			return v, n, true
		}
	}
	return "", names[0], false
}

// value is the flag's default as the environment gives it. A string flag
// takes an empty value as given; for the typed ones empty means unset.
func (f *Flags) value(name, def string, typed bool) (string, string) {
	v, n, ok := f.lookup(name)
	if !ok || (typed && v == "") {
		return def, n
	}
	return v, n
}

// String defines a string flag.
func (f *Flags) String(name, def, usage string) *string { return f.str(name, def, usage, false) }

// Secret defines a string flag whose value -h never shows.
func (f *Flags) Secret(name, def, usage string) *string {
	return f.masked(name, def, usage, func(string) string { return "xxxxx" })
}

// SecretURL defines a URL flag whose password -h never shows.
func (f *Flags) SecretURL(name, def, usage string) *string { return f.masked(name, def, usage, Redact) }

func (f *Flags) masked(name, def, usage string, mask func(string) string) *string {
	v, env := f.value(name, def, false)
	p := &v
	f.FlagSet.Var(&maskedValue{p: p, mask: mask}, name, usage+" (env "+env+")")
	return p
}

// maskedValue is a string flag printed through mask (the flag package prints a
// flag's default by its String method).
type maskedValue struct {
	p    *string
	mask func(string) string
}

func (m *maskedValue) String() string {
	if m == nil || m.p == nil || *m.p == "" {
		return ""
	}
	return m.mask(*m.p)
}

func (m *maskedValue) Set(v string) error { *m.p = v; return nil }

func (f *Flags) str(name, def, usage string, typed bool) *string {
	v, env := f.value(name, def, typed)
	return f.FlagSet.String(name, v, usage+" (env "+env+")")
}

// Bool defines a boolean flag.
func (f *Flags) Bool(name string, def bool, usage string) *bool {
	v, env := f.value(name, strconv.FormatBool(def), true)
	b, err := strconv.ParseBool(v)
	if err != nil {
		f.errs = append(f.errs, fmt.Errorf("%s=%q: use true or false", env, v))
	}
	return f.FlagSet.Bool(name, b, usage+" (env "+env+")")
}

// Duration defines a duration flag of at least lo.
func (f *Flags) Duration(name string, def, lo time.Duration, usage string) *time.Duration {
	p := new(time.Duration)
	s := f.str(name, def.String(), usage, true)
	f.after = append(f.after, func() error {
		d, err := time.ParseDuration(*s)
		if err != nil || d < lo {
			return fmt.Errorf("--%s %q: give a duration of at least %s, such as %s", name, *s, lo, def)
		}
		*p = d
		return nil
	})
	return p
}

// Int defines an integer flag of at least lo.
func (f *Flags) Int(name string, def, lo int, usage string) *int {
	p := new(int)
	s := f.str(name, strconv.Itoa(def), usage, true)
	f.after = append(f.after, func() error {
		n, err := strconv.Atoi(*s)
		if err != nil || n < lo {
			return fmt.Errorf("--%s %q: give a whole number of at least %d", name, *s, lo)
		}
		*p = n
		return nil
	})
	return p
}

// Float defines a number flag in [lo, hi].
func (f *Flags) Float(name string, def, lo, hi float64, usage string) *float64 {
	p := new(float64)
	s := f.str(name, strconv.FormatFloat(def, 'g', -1, 64), usage, true)
	f.after = append(f.after, func() error {
		n, err := strconv.ParseFloat(*s, 64)
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("--%s %q: give a number from %g to %g", name, *s, lo, hi)
		}
		*p = n
		return nil
	})
	return p
}

// Parse parses args and checks every typed flag, naming the fix on error.
func (f *Flags) Parse(args []string) error {
	if err := f.FlagSet.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return fmt.Errorf("usage of %s:\n%s", f.Name(), f.Usage())
		}
		return fmt.Errorf("%w (run with -h for every flag)", err)
	}
	errs := f.errs
	for _, a := range f.after {
		if err := a(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Usage lists the flags with their defaults and environment variables.
func (f *Flags) Usage() string {
	var b strings.Builder
	f.SetOutput(&b)
	f.PrintDefaults()
	f.SetOutput(io.Discard)
	return b.String()
}

// Logging is the --log-level and --log-format pair.
type Logging struct{ level, format *string }

// AddLogging defines --log-level and --log-format.
func AddLogging(f *Flags) Logging {
	return Logging{
		level:  f.str("log-level", "info", "debug, info, warn or error", true),
		format: f.str("log-format", "text", "text or json", true),
	}
}

// Logger builds the logger the flags ask for.
func (l Logging) Logger(out io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(*l.level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", *l.level)
	}
	hopts := &slog.HandlerOptions{Level: level}
	switch *l.format {
	case "text":
		return slog.New(slog.NewTextHandler(out, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(out, hopts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", *l.format)
}

// NATS is how a command reaches NATS: the URL and, for a secured server, one
// way to authenticate plus TLS.
type NATS struct {
	URL                                *string
	user, password, token, creds, nkey *string
	tlsCert, tlsKey, tlsCA             *string
	tlsFirst                           *bool
}

// AddNATS defines --nats-url (default def) and the auth and TLS flags.
func AddNATS(f *Flags, def string) NATS {
	return NATS{
		URL:      f.SecretURL("nats-url", def, "NATS server `URL`(s), comma separated"),
		user:     f.String("nats-user", "", "NATS user name (with --nats-password)"),
		password: f.Secret("nats-password", "", "NATS `password`"),
		token:    f.Secret("nats-token", "", "NATS authentication `token`"),
		creds:    f.String("nats-creds", "", "NATS credentials file (JWT + NKey seed)"),
		nkey:     f.String("nats-nkey", "", "NATS NKey seed file"),
		tlsCert:  f.String("nats-tls-cert", "", "client certificate for NATS TLS (with --nats-tls-key)"),
		tlsKey:   f.String("nats-tls-key", "", "client key for NATS TLS"),
		tlsCA:    f.String("nats-tls-ca", "", "CA certificate that signed the NATS server's certificate"),
		tlsFirst: f.Bool("nats-tls-first", false, "start TLS before the NATS protocol greeting (server tls.handshake_first)"),
	}
}

// Options turns the flags into nats.go options, or says which flag is wrong.
func (n NATS) Options() ([]nats.Option, error) {
	var opts []nats.Option
	ways := 0
	if *n.user != "" || *n.password != "" {
		if *n.user == "" || *n.password == "" {
			return nil, errors.New("--nats-user and --nats-password go together: give both")
		}
		opts = append(opts, nats.UserInfo(*n.user, *n.password))
		ways++
	}
	if *n.token != "" {
		opts = append(opts, nats.Token(*n.token))
		ways++
	}
	if *n.creds != "" {
		if _, err := os.Stat(*n.creds); err != nil {
			return nil, fmt.Errorf("--nats-creds: %w", err)
		}
		opts = append(opts, nats.UserCredentials(*n.creds))
		ways++
	}
	if *n.nkey != "" {
		opt, err := nats.NkeyOptionFromSeed(*n.nkey)
		if err != nil {
			return nil, fmt.Errorf("--nats-nkey %s: %w (give a file holding an NKey user seed, SU…)", *n.nkey, err)
		}
		opts = append(opts, opt)
		ways++
	}
	if ways > 1 {
		return nil, errors.New("give one way to authenticate to NATS: user+password, token, creds or nkey")
	}
	if (*n.tlsCert == "") != (*n.tlsKey == "") {
		return nil, errors.New("--nats-tls-cert and --nats-tls-key go together: give both")
	}
	if *n.tlsCert != "" {
		opts = append(opts, nats.ClientCert(*n.tlsCert, *n.tlsKey))
	}
	if *n.tlsCA != "" {
		opts = append(opts, nats.RootCAs(*n.tlsCA))
	}
	if *n.tlsFirst {
		opts = append(opts, nats.TLSHandshakeFirst())
	}
	return opts, nil
}

// Connect connects as name, reconnecting for ever and logging the state
// changes; the error says what to check.
func (n NATS) Connect(name string, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	opts, err := n.Options()
	if err != nil {
		return nil, err
	}
	opts = append(opts, nats.Name(name), nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("NATS reconnected", "url", c.ConnectedUrlRedacted()) }))
	opts = append(opts, extra...)
	nc, err := nats.Connect(*n.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w (is the server running and are the credentials right?)", Redact(*n.URL), err)
	}
	return nc, nil
}

// Redact hides a password in a URL before it is logged or printed.
func Redact(u string) string {
	at := strings.LastIndexByte(u, '@')
	scheme := strings.Index(u, "://")
	if at < 0 || scheme < 0 || at < scheme {
		return u
	}
	userinfo := u[scheme+3 : at]
	if i := strings.IndexByte(userinfo, ':'); i >= 0 {
		return u[:scheme+3] + userinfo[:i] + ":xxxxx" + u[at:]
	}
	return u[:scheme+3] + "xxxxx" + u[at:]
}

// TuneGC runs the garbage collector at GOGC=400 unless the GOGC environment
// variable says otherwise: a worker allocates for every event it handles but
// keeps a small heap, so collecting less often costs little memory and saves
// CPU (about a tenth of the worker's in the benchmark, against GOGC=200). In a
// container with a memory limit, and unless GOMEMLIMIT is set, the heap is
// also held to three quarters of that limit, so the larger headroom cannot run
// the process out of memory.
func TuneGC(env Env) {
	percent, limit := gcTuning(env, cgroupMemoryLimit())
	if percent > 0 {
		debug.SetGCPercent(percent)
	}
	if limit > 0 {
		debug.SetMemoryLimit(limit)
	}
}

// gcTuning returns the GC percent and soft memory limit to set (0: leave as
// is), given the environment and the cgroup's memory limit (0: none).
func gcTuning(env Env, cgroupLimit int64) (percent int, limit int64) {
	if _, ok := env("GOGC"); !ok {
		percent = 400
	}
	if _, ok := env("GOMEMLIMIT"); !ok && cgroupLimit > 0 {
		limit = cgroupLimit / 4 * 3
	}
	return percent, limit
}

// cgroupMemoryLimit reads the memory limit of the process's cgroup (v2, else
// v1); 0 when there is none or it cannot be read. An unlimited v1 group reports
// a huge number, which is no limit either.
func cgroupMemoryLimit() int64 {
	for _, path := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		return parseCgroupLimit(string(b))
	}
	return 0
}

// parseCgroupLimit reads a cgroup memory limit file's content; 0 for none.
func parseCgroupLimit(s string) int64 {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n <= 0 || n >= 1<<60 {
		return 0 // "max", or v1's page-rounded maximum
	}
	return n
}
