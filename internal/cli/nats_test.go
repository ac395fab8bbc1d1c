package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// pki writes a CA and a certificate it signed for name (server and client use).
func pki(t *testing.T, dir string) (caFile string, issue func(name string) (certFile, keyFile string)) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile = write("ca.pem", "CERTIFICATE", caDER)
	serial := int64(2)
	return caFile, func(name string) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		serial++
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := x509.MarshalECPrivateKey(key)
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "EC PRIVATE KEY", kb)
	}
}

// TestNATSTLSAndNKeyAgainstARealServer connects through the flags to a server
// that demands a client certificate and an NKey user.
func TestNATSTLSAndNKeyAgainstARealServer(t *testing.T) {
	dir := t.TempDir()
	caFile, issue := pki(t, dir)
	srvCert, srvKey := issue("server")
	cliCert, cliKey := issue("client")
	user, _ := nkeys.CreateUser()
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	seedFile := filepath.Join(dir, "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: srvCert, KeyFile: srvKey, CaFile: caFile, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	tc.MinVersion = tls.VersionTLS12
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		TLS: true, TLSConfig: tc, TLSVerify: true, Nkeys: []*server.NkeyUser{{Nkey: pub}}})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	t.Cleanup(ns.Shutdown)
	url := ns.ClientURL()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	connect := func(args ...string) error {
		f := NewFlags("cmd", "", NoEnv)
		n := AddNATS(f, url)
		if err := f.Parse(args); err != nil {
			t.Fatal(err)
		}
		nc, err := n.Connect("test", log)
		if err == nil {
			nc.Close()
		}
		return err
	}
	if err := connect("--nats-tls-ca", caFile, "--nats-tls-cert", cliCert, "--nats-tls-key", cliKey, "--nats-nkey", seedFile); err != nil {
		t.Fatalf("right certificate and NKey refused: %v", err)
	}
	if err := connect("--nats-tls-ca", caFile, "--nats-nkey", seedFile); err == nil {
		t.Fatal("connected without a client certificate")
	}
	if err := connect("--nats-tls-ca", caFile, "--nats-tls-cert", cliCert, "--nats-tls-key", cliKey); err == nil {
		t.Fatal("connected without the NKey")
	}
}
