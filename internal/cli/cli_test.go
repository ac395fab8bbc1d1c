package cli

import (
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) Env {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestFlagsReadScopedThenSharedEnv(t *testing.T) {
	f := NewFlags("router", "ROUTER", env(map[string]string{
		"PRESENCED_ROUTER_OFFER_TIMEOUT": "3s", "PRESENCED_OFFER_TIMEOUT": "9s", "PRESENCED_NATS_URL": "nats://x:4222",
	}))
	n := AddNATS(f, "nats://default:4222")
	d := f.Duration("offer-timeout", time.Second, time.Millisecond, "")
	if err := f.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if *d != 3*time.Second || *n.URL != "nats://x:4222" {
		t.Fatalf("offer-timeout %v, url %s", *d, *n.URL)
	}
	f = NewFlags("router", "ROUTER", env(map[string]string{"PRESENCED_ROUTER_OFFER_TIMEOUT": "3s"}))
	d = f.Duration("offer-timeout", time.Second, time.Millisecond, "")
	if err := f.Parse([]string{"--offer-timeout", "5s"}); err != nil || *d != 5*time.Second {
		t.Fatalf("a flag must win over the environment: %v %v", *d, err)
	}
}

func TestFlagErrorsNameTheFix(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--n", "zero"}, nil, `--n "zero": give a whole number of at least 1`},
		{[]string{"--d", "soon"}, nil, `--d "soon": give a duration of at least 1ms`},
		{[]string{"--x", "2"}, nil, `--x "2": give a number from 0 to 1`},
		{nil, map[string]string{"PRESENCED_B": "maybe"}, `PRESENCED_B="maybe": use true or false`},
		{[]string{"--nope"}, nil, "flag provided but not defined: -nope (run with -h for every flag)"},
	} {
		f := NewFlags("cmd", "", env(tc.env))
		f.Int("n", 1, 1, "")
		f.Duration("d", time.Second, time.Millisecond, "")
		f.Float("x", 0.5, 0, 1, "")
		f.Bool("b", false, "")
		err := f.Parse(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v %v: error %v, want %q", tc.args, tc.env, err, tc.want)
		}
	}
}

func TestNATSOptions(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // "" = valid
	}{
		{nil, ""},
		{[]string{"--nats-user", "u", "--nats-password", "p"}, ""},
		{[]string{"--nats-user", "u"}, "go together"},
		{[]string{"--nats-user", "u", "--nats-password", "p", "--nats-token", "t"}, "one way to authenticate"},
		{[]string{"--nats-creds", "/nonexistent.creds"}, "--nats-creds"},
		{[]string{"--nats-nkey", "/nonexistent.nk"}, "--nats-nkey"},
		{[]string{"--nats-tls-cert", "c.pem"}, "--nats-tls-cert and --nats-tls-key go together"},
	} {
		f := NewFlags("cmd", "", env(nil))
		n := AddNATS(f, "")
		if err := f.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		_, err := n.Options()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: error %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"nats://u:secret@h:4222":      "nats://u:xxxxx@h:4222",
		"redis://:secret@h:6379/0":    "redis://:xxxxx@h:6379/0",
		"nats://token@h:4222":         "nats://xxxxx@h:4222",
		"nats://h:4222":               "nats://h:4222",
		"rediss://user:p@ss@h:6380/0": "rediss://user:xxxxx@h:6380/0",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHelpNeverShowsSecrets(t *testing.T) {
	f := NewFlags("cmd", "", env(map[string]string{
		"PRESENCED_NATS_PASSWORD": "hunter2", "PRESENCED_NATS_TOKEN": "s3cr3t",
		"PRESENCED_NATS_URL": "nats://app:natspw@n1:4222", "PRESENCED_REDIS_URL": "redis://app:redispw@r1:6379/0",
	}))
	n := AddNATS(f, "")
	r := AddRedis(f)
	err := f.Parse([]string{"-h"})
	if err == nil {
		t.Fatal("-h gave no usage")
	}
	for _, secret := range []string{"hunter2", "s3cr3t", "natspw", "redispw"} {
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("-h shows %q:\n%s", secret, err)
		}
	}
	if !strings.Contains(err.Error(), "redis://app:xxxxx@r1:6379/0") {
		t.Fatalf("-h should show the Redis URL with its password hidden:\n%s", err)
	}
	// The values themselves are intact.
	f = NewFlags("cmd", "", env(map[string]string{"PRESENCED_NATS_PASSWORD": "hunter2", "PRESENCED_REDIS_URL": "redis://app:redispw@r1"}))
	n, r = AddNATS(f, ""), AddRedis(f)
	if err := f.Parse([]string{"--nats-user", "u"}); err != nil || *n.password != "hunter2" || *r.URL != "redis://app:redispw@r1" {
		t.Fatalf("values: %q %q %v", *n.password, *r.URL, err)
	}
}

func TestGCTuning(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		cgroup  int64
		percent int
		limit   int64
	}{
		{"defaults, no cgroup limit", nil, 0, 400, 0},
		{"a container of 2 GiB", nil, 2 << 30, 400, 3 << 29},
		{"GOGC set", map[string]string{"GOGC": "100"}, 0, 0, 0},
		{"GOMEMLIMIT set", map[string]string{"GOMEMLIMIT": "1GiB"}, 2 << 30, 400, 0},
		{"both set", map[string]string{"GOGC": "100", "GOMEMLIMIT": "1GiB"}, 2 << 30, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			percent, limit := gcTuning(env(tc.env), tc.cgroup)
			if percent != tc.percent || limit != tc.limit {
				t.Errorf("gcTuning = %d, %d; want %d, %d", percent, limit, tc.percent, tc.limit)
			}
		})
	}
}

func TestParseCgroupLimit(t *testing.T) {
	for in, want := range map[string]int64{
		"2147483648\n":          2 << 30, // v2 or v1 with a limit
		"max\n":                 0,       // v2 without one
		"9223372036854771712\n": 0,       // v1 without one
		"":                      0,
		"-1":                    0,
	} {
		if got := parseCgroupLimit(in); got != want {
			t.Errorf("parseCgroupLimit(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestRedisSpeaksRESP2UnlessTold(t *testing.T) {
	for url, want := range map[string]int{
		"redis://localhost:6379/0":                            2,
		"rediss://user:pw@localhost:6380/1":                   2,
		"redis://localhost:6379/0?protocol=3":                 3,
		"redis://localhost:6379/0?dial_timeout=1s&protocol=3": 3,
		"redis://localhost:6379/0?protocol=2":                 2,
		"redis://localhost:6379/0?client_name=protocol":       2, // a value, not the key
	} {
		opts, err := ParseRedisURL(url)
		if err != nil {
			t.Fatalf("ParseRedisURL(%s): %v", url, err)
		}
		if opts.Protocol != want {
			t.Errorf("ParseRedisURL(%s): protocol %d, want %d", url, opts.Protocol, want)
		}
	}
	if _, err := ParseRedisURL("redis://localhost:6379/0?protocol=x"); err == nil {
		t.Error("a bad protocol was accepted")
	}
}
