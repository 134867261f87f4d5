package k8senv

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"testing"
)

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{
		`/tmp/plain`:        "/tmp/plain",
		`/tmp/a\040b`:       "/tmp/a b",
		`/tmp/tab\011x\134`: "/tmp/tab\tx\\",
		`/tmp/short\04`:     `/tmp/short\04`,
	} {
		if got := unescapeMountPath(in); got != want {
			t.Errorf("unescapeMountPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestServiceAPIServerIP(t *testing.T) {
	if got := serviceAPIServerIP(); !got.Equal(net.ParseIP("10.96.0.1")) {
		t.Errorf("got %v, want 10.96.0.1", got)
	}
}

// A leaf chains to the CA, carries the groups as organizations (how
// Kubernetes reads them) and only the usage asked for.
func TestIssuedCertificates(t *testing.T) {
	ca, err := newCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.issue(certSpec{commonName: "system:node:n1", groups: []string{"system:nodes"}})
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(leaf.CertPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate does not verify: %v", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("a client certificate verifies for serverAuth")
	}
	if cert.Subject.CommonName != "system:node:n1" || len(cert.Subject.Organization) != 1 || cert.Subject.Organization[0] != "system:nodes" {
		t.Errorf("subject %v", cert.Subject)
	}
}
