package cli

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Redis is how a command reaches Redis: one server or a cluster, with
// credentials in the URL and optional TLS material.
type Redis struct {
	URL                    *string
	cluster                *bool
	tlsCert, tlsKey, tlsCA *string
}

// AddRedis defines --redis-url, --redis-cluster and the Redis TLS flags.
func AddRedis(f *Flags) Redis {
	return Redis{
		URL:     f.SecretURL("redis-url", "", "Redis `URL`: redis://[user:password@]host:port/db, rediss:// for TLS; with --redis-cluster, redis://host:port?addr=host2:port&addr=host3:port; empty keeps state in memory"),
		cluster: f.Bool("redis-cluster", false, "the URL names Redis Cluster nodes"),
		tlsCert: f.String("redis-tls-cert", "", "client certificate for Redis TLS (with --redis-tls-key)"),
		tlsKey:  f.String("redis-tls-key", "", "client key for Redis TLS"),
		tlsCA:   f.String("redis-tls-ca", "", "CA certificate that signed the Redis server's certificate"),
	}
}

// Client builds the client the flags describe and a description of it with no
// secret in it, for logs.
func (r Redis) Client() (redis.UniversalClient, string, error) {
	if (*r.tlsCert == "") != (*r.tlsKey == "") {
		return nil, "", errors.New("--redis-tls-cert and --redis-tls-key go together: give both")
	}
	if *r.cluster {
		opts, err := redis.ParseClusterURL(*r.URL)
		if err != nil {
			return nil, "", fmt.Errorf("--redis-url %s: %w (expected redis://[user:password@]host:port?addr=host2:port&addr=host3:port)", Redact(*r.URL), err)
		}
		opts.Protocol = protocolFor(*r.URL, opts.Protocol)
		if err := r.tls(&opts.TLSConfig, strings.HasPrefix(*r.URL, "rediss://")); err != nil {
			return nil, "", err
		}
		return redis.NewClusterClient(opts), "cluster " + strings.Join(opts.Addrs, ","), nil
	}
	opts, err := ParseRedisURL(*r.URL)
	if err != nil {
		return nil, "", fmt.Errorf("--redis-url %s: %w (expected redis://[user:password@]host:port/db)", Redact(*r.URL), err)
	}
	if err := r.tls(&opts.TLSConfig, strings.HasPrefix(*r.URL, "rediss://")); err != nil {
		return nil, "", err
	}
	return redis.NewClient(opts), opts.Addr, nil
}

// ParseRedisURL parses the URL of one Redis server (or a Sentinel setup) as
// go-redis does, with the protocol of protocolFor.
func ParseRedisURL(u string) (*redis.Options, error) {
	opts, err := redis.ParseURL(u)
	if err != nil {
		return nil, err
	}
	opts.Protocol = protocolFor(u, opts.Protocol)
	return opts, nil
}

// protocolFor is RESP2 unless the URL names a protocol (then parsed, as go-redis
// read it): presenced uses nothing of RESP3, whose client checks every call for
// push notifications (1.6% of the worker's CPU at 10 000 events/s, 2.4-4% at
// 1 000/s in docs/performance.md's profiles). The URL is known to parse.
func protocolFor(u string, parsed int) int {
	if pu, err := url.Parse(u); err == nil && pu.Query().Has("protocol") {
		return parsed
	}
	return 2
}

func (r Redis) tls(cfg **tls.Config, secure bool) error {
	if *r.tlsCert == "" && *r.tlsCA == "" {
		return nil
	}
	if !secure {
		return errors.New("--redis-tls-* flags need a rediss:// URL")
	}
	if *cfg == nil {
		*cfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if *r.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(*r.tlsCert, *r.tlsKey)
		if err != nil {
			return fmt.Errorf("--redis-tls-cert/--redis-tls-key: %w", err)
		}
		(*cfg).Certificates = []tls.Certificate{cert}
	}
	if *r.tlsCA != "" {
		pem, err := os.ReadFile(*r.tlsCA)
		if err != nil {
			return fmt.Errorf("--redis-tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--redis-tls-ca %s: no PEM certificate in it", *r.tlsCA)
		}
		(*cfg).RootCAs = pool
	}
	return nil
}
