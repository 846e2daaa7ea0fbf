package xds

import (
	"crypto/sha256"
	"fmt"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/api"
	"github.com/meshca/meshca/ca"
)

// The secret names of direct mode. Envoy configs written for SPIRE's names (the
// workload's SPIFFE ID and "spiffe://<trust-domain>") work too.
const (
	SecretDefault = "default"
	SecretRootCA  = "ROOTCA"
)

// secretKind is what a secret name refers to.
type secretKind int

const (
	kindCert secretKind = iota + 1
	kindBundle
)

// classifyName says what a requested secret name means for this identity: its own
// certificate, the bundle, or an error (another identity's name is PermissionDenied,
// an unknown name InvalidArgument).
func classifyName(name string, ident ca.Identity) (secretKind, error) {
	td := ident.ID.TrustDomain()
	switch {
	case name == SecretDefault || name == ident.ID.String():
		return kindCert, nil
	case name == SecretRootCA || name == td.IDString():
		return kindBundle, nil
	case strings.HasPrefix(name, "spiffe://"):
		id, err := spiffeid.FromString(name)
		if err == nil && id.MemberOf(td) {
			return 0, fmt.Errorf("secret %q belongs to another identity than %q: %w",
				name, ident.ID, api.ErrPermissionDenied)
		}
		return 0, fmt.Errorf("unknown secret %q (no federated trust domain is configured): %w",
			name, ca.ErrInvalidRequest)
	default:
		return 0, fmt.Errorf("unknown secret %q (want %q, %q, the workload's SPIFFE ID or "+
			"%q): %w", name, SecretDefault, SecretRootCA, td.IDString(), ca.ErrInvalidRequest)
	}
}

func certSecret(name string, wc *workloadCert) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(wc.chainPEM),
			PrivateKey:       inline(wc.keyPEM),
		}},
	}
}

func bundleSecret(name string, bundlePEM []byte) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline(bundlePEM),
		}},
	}
}

func inline(b []byte) *core.DataSource {
	return &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: b}}
}

// marshalSecret packs a secret deterministically, so equal content gives equal bytes.
func marshalSecret(s *tlsv3.Secret) (*anypb.Any, [sha256.Size]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(s)
	if err != nil {
		return nil, [sha256.Size]byte{}, fmt.Errorf("failed to encode secret %q: %w", s.Name, err)
	}
	a := &anypb.Any{TypeUrl: secretTypeURL, Value: b}
	return a, sha256.Sum256(b), nil
}
