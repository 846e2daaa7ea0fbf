package envoyvalidate

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	xdsmatcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/anypb"
)

// checkMessage runs the checks that the generated rules lack on one message.
func (w *walker) checkMessage(at *location, m protoreflect.Message) {
	switch x := m.Interface().(type) {
	case *anypb.Any:
		w.checkAny(at, x)
	case *matcherv3.RegexMatcher:
		w.checkRegex(at, x.GetRegex())
	case *xdsmatcherv3.RegexMatcher:
		w.checkRegex(at, x.GetRegex())
	case *tlsv3.TlsCertificate:
		w.checkTLSCertificate(at, x)
	case *tlsv3.CertificateValidationContext:
		w.checkTrustedCA(at, x)
	case *tlsv3.Secret:
		w.checkSecret(at, x)
	}
	w.checkTransportAPIVersion(at, m)
}

// checkAny reports an Any that the walk cannot expand. protorange silently treats such
// an Any as an opaque message, which would let its content escape validation.
func (w *walker) checkAny(at *location, a *anypb.Any) {
	url := a.GetTypeUrl()
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(url)
	if err != nil {
		reason := fmt.Sprintf("type URL %q names no known type", url)
		w.add(at.String(), ErrUnknownType, reason, nil)
		return
	}
	if err := proto.Unmarshal(a.GetValue(), mt.New().Interface()); err != nil {
		w.add(at.String(), ErrBadAny, fmt.Sprintf("value does not decode as %q", url), err)
	}
}

// checkUnknownFields reports the numbers of fields a message carries but its proto
// does not declare: typically set by a newer version of the API.
func (w *walker) checkUnknownFields(at *location, raw []byte) {
	var nums []protowire.Number
	for len(raw) > 0 {
		num, _, n := protowire.ConsumeField(raw)
		if n < 0 {
			break // the rest is malformed; the numbers so far are enough to point at it
		}
		if !slices.Contains(nums, num) {
			nums = append(nums, num)
		}
		raw = raw[n:]
	}
	reason := fmt.Sprintf("fields %v are not in the proto", nums)
	w.add(at.String(), ErrUnknownFields, reason, nil)
}

// checkDeprecatedField reports a deprecated field that is set.
func (w *walker) checkDeprecatedField(at *location, fd protoreflect.FieldDescriptor) {
	if opts, ok := fd.Options().(*descriptorpb.FieldOptions); ok && opts.GetDeprecated() {
		w.add(at.String(), ErrDeprecated, "field is deprecated", nil)
	}
}

// checkDeprecatedEnum reports a deprecated enum value, if fd is an enum field.
func (w *walker) checkDeprecatedEnum(at *location, fd protoreflect.FieldDescriptor,
	v protoreflect.Value) {
	if fd.Enum() == nil {
		return
	}
	ev := fd.Enum().Values().ByNumber(v.Enum())
	if ev == nil {
		return
	}
	if opts, ok := ev.Options().(*descriptorpb.EnumValueOptions); ok && opts.GetDeprecated() {
		w.add(at.String(), ErrDeprecated, fmt.Sprintf("enum value %s is deprecated", ev.Name()),
			nil)
	}
}

// apiVersionEnum is the enum of every transport_api_version field.
const apiVersionEnum = "envoy.config.core.v3.ApiVersion"

// checkTransportAPIVersion reports a transport_api_version other than V3, set or not:
// the API still declares AUTO (the default) and V2, but Envoy refuses both.
func (w *walker) checkTransportAPIVersion(at *location, m protoreflect.Message) {
	fd := m.Descriptor().Fields().ByName("transport_api_version")
	if fd == nil || fd.Enum() == nil || fd.Enum().FullName() != apiVersionEnum {
		return
	}
	if m.Get(fd).Enum() != protoreflect.EnumNumber(corev3.ApiVersion_V3) {
		w.add(at.field("transport_api_version"), ErrUnsupported,
			"must be V3 (Envoy refuses AUTO, the default, and V2)", nil)
	}
}

// checkRegex compiles the regex of a RegexMatcher with Go's regexp, whose syntax is
// close to RE2's: what Go refuses, Envoy almost certainly refuses too.
func (w *walker) checkRegex(at *location, expr string) {
	if _, err := regexp.Compile(expr); err != nil {
		w.add(at.field("regex"), ErrRegex, "does not compile", err)
	}
}

// checkTLSCertificate checks that a certificate has its parts and that inline PEM
// parses. A PKCS #12 bundle stands for both parts and is not looked into.
func (w *walker) checkTLSCertificate(at *location, c *tlsv3.TlsCertificate) {
	if c.GetPkcs12() == nil {
		if c.GetCertificateChain() == nil {
			w.add(at.field("certificate_chain"), ErrEmptySecret, "not set", nil)
		}
		if c.GetPrivateKey() == nil && c.GetPrivateKeyProvider() == nil {
			w.add(at.field("private_key"), ErrEmptySecret,
				"not set (nor private_key_provider)", nil)
		}
	}
	if data, field, ok := inlineData(c.GetCertificateChain()); ok {
		if err := parseCertificates(data); err != nil {
			w.add(at.field("certificate_chain."+field), ErrPEM, "bad certificate chain", err)
		}
	}
	if data, field, ok := inlineData(c.GetPrivateKey()); ok {
		if err := parsePrivateKey(data); err != nil {
			w.add(at.field("private_key."+field), ErrPEM, "bad private key", err)
		}
	}
}

// checkTrustedCA checks that inline trusted CA certificates parse.
func (w *walker) checkTrustedCA(at *location, vc *tlsv3.CertificateValidationContext) {
	if data, field, ok := inlineData(vc.GetTrustedCa()); ok {
		if err := parseCertificates(data); err != nil {
			w.add(at.field("trusted_ca."+field), ErrPEM, "bad trusted CA certificates", err)
		}
	}
}

// checkSecret reports an SDS secret without a name or without content: Envoy matches
// secrets by name, and an empty one can never be used.
func (w *walker) checkSecret(at *location, s *tlsv3.Secret) {
	if s.GetName() == "" {
		w.add(at.field("name"), ErrEmptySecret, "secret has no name", nil)
	}
	if s.GetType() == nil {
		w.add(at.String(), ErrEmptySecret, "secret has no content (no type is set)", nil)
	}
}

// inlineData returns the inline bytes of a data source and the name of the field
// holding them, or false when the data lives elsewhere (a file, an environment variable).
func inlineData(ds *corev3.DataSource) ([]byte, string, bool) {
	switch s := ds.GetSpecifier().(type) {
	case *corev3.DataSource_InlineBytes:
		return s.InlineBytes, "inline_bytes", true
	case *corev3.DataSource_InlineString:
		return []byte(s.InlineString), "inline_string", true
	}
	return nil, "", false
}

// Errors for PEM data that holds nothing of the expected type.
var (
	errNoCertificate = errors.New("no PEM CERTIFICATE block")
	errNoPrivateKey  = errors.New("no PEM private key block")
)

// parseCertificates requires at least one CERTIFICATE block and that each one parses.
// Other blocks are skipped, as OpenSSL-style readers do.
func parseCertificates(data []byte) error {
	n := 0
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %w", n, err)
		}
		n++
	}
	if n == 0 {
		return errNoCertificate
	}
	return nil
}

// parsePrivateKey requires a PEM private key block (PKCS #8, SEC 1 or PKCS #1) that
// parses. An encrypted key passes unread.
func parsePrivateKey(data []byte) error {
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		var err error
		switch {
		case block.Type == "ENCRYPTED PRIVATE KEY" || block.Headers["Proc-Type"] != "":
			return nil // encrypted: only Envoy, with the password, can read it
		case block.Type == "EC PRIVATE KEY":
			_, err = x509.ParseECPrivateKey(block.Bytes)
		case block.Type == "RSA PRIVATE KEY":
			_, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case strings.HasSuffix(block.Type, "PRIVATE KEY"):
			_, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		default:
			continue
		}
		return err
	}
	return errNoPrivateKey
}
