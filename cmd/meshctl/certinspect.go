package main

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/ca"
)

// The answers to "does the chain verify to the bundle?".
const (
	chainsYes     = "yes"
	chainsNo      = "no"
	chainsUnknown = "unknown"
)

// bundleFromServer names the server as the origin of the bundle.
const bundleFromServer = "server"

// inspection is the output of `meshctl cert inspect`. It describes the leaf, the
// first certificate of the file.
type inspection struct {
	File string `json:"file"`
	// SPIFFEID is the leaf's URI SAN; empty when it carries no valid SPIFFE ID.
	SPIFFEID string `json:"spiffe_id"`
	// Serial is the serial number in lowercase hex, as `cert list` shows it.
	Serial    string    `json:"serial"`
	Subject   string    `json:"subject"`
	Issuer    string    `json:"issuer"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// TimeLeftSeconds is the time until NotAfter; negative once expired.
	TimeLeftSeconds int64 `json:"time_left_seconds"`
	// KeyType names the leaf's key as --key-type does, e.g. "ec-p256".
	KeyType string `json:"key_type"`
	// ChainLength counts the certificates in the file, the leaf included.
	ChainLength  int          `json:"chain_length"`
	Verification verification `json:"verification"`

	// idErr says why the leaf has no SPIFFE ID; shown in the table only.
	idErr string
	now   time.Time
}

// verification says whether the chain verifies, as an X.509-SVID, to a bundle.
type verification struct {
	// ChainsToBundle is "yes", "no" or "unknown" (no bundle to verify with).
	ChainsToBundle string `json:"chains_to_bundle"`
	// Bundle is where the bundle came from: a file name or "server".
	Bundle string `json:"bundle,omitempty"`
	// Error says why verification failed.
	Error string `json:"error,omitempty"`
}

// pemRoots serves the same roots for any trust domain: a PEM bundle file names none,
// so the leaf's own trust domain is the one asked for.
type pemRoots []*x509.Certificate

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (r pemRoots) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (
	*x509bundle.Bundle, error) {
	return x509bundle.FromX509Authorities(td, r), nil
}

var _ x509bundle.Source = pemRoots(nil)

func newCertInspectCommand(g *globals) *cobra.Command {
	var bundleFile string
	cmd := &cobra.Command{
		Use:   "inspect FILE",
		Short: "Describe a PEM certificate chain and check it against the trust bundle",
		Long: "Describe the first certificate of a PEM file and verify the chain as an\n" +
			"X.509-SVID against a bundle: --bundle FILE, or else the server's bundle when\n" +
			"the admin socket answers, or else the answer is \"unknown (no bundle)\".",
		Example: "  meshctl cert inspect ./backup-svid/svid.pem --bundle ./backup-svid/bundle.pem",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			certs, err := readPEMCerts(args[0])
			if err != nil {
				return err
			}
			var src x509bundle.Source
			var srcName string
			if bundleFile != "" {
				roots, err := readPEMCerts(bundleFile)
				if err != nil {
					return fmt.Errorf("failed to read --bundle: %w", err)
				}
				src, srcName = pemRoots(roots), bundleFile
			} else if b, err := g.fetchBundle(cmd.Context()); err == nil {
				src, srcName = b, bundleFromServer
			} else {
				fmt.Fprintf(cmd.ErrOrStderr(),
					"meshctl: cannot check the chain: no --bundle given, and %v\n", err)
			}
			res := inspect(args[0], certs, src, srcName, g.now())
			return render(cmd.OutOrStdout(), g.output, res, res.table)
		},
	}
	cmd.Flags().StringVar(&bundleFile, "bundle", "", "PEM file of the trusted roots")
	_ = cmd.MarkFlagFilename("bundle", "pem", "crt")
	return cmd
}

// inspect describes certs[0] and verifies certs against src at now. A nil src gives
// the answer "unknown".
func inspect(file string, certs []*x509.Certificate, src x509bundle.Source, srcName string,
	now time.Time) inspection {
	leaf := certs[0]
	res := inspection{
		File:            file,
		Serial:          ca.SerialHex(leaf.SerialNumber),
		Subject:         leaf.Subject.String(),
		Issuer:          leaf.Issuer.String(),
		NotBefore:       leaf.NotBefore.UTC(),
		NotAfter:        leaf.NotAfter.UTC(),
		TimeLeftSeconds: int64(leaf.NotAfter.Sub(now) / time.Second),
		KeyType:         keyType(leaf.PublicKey),
		ChainLength:     len(certs),
		now:             now,
	}
	if id, err := x509svid.IDFromCert(leaf); err == nil {
		res.SPIFFEID = id.String()
	} else {
		res.idErr = err.Error()
	}

	if src == nil {
		res.Verification = verification{ChainsToBundle: chainsUnknown}
		return res
	}
	res.Verification = verification{ChainsToBundle: chainsYes, Bundle: srcName}
	if _, _, err := x509svid.Verify(certs, src, x509svid.WithTime(now)); err != nil {
		res.Verification.ChainsToBundle = chainsNo
		res.Verification.Error = err.Error()
	}
	return res
}

// keyType names a public key the way --key-type does.
func keyType(pub any) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ec-" + strings.ToLower(strings.ReplaceAll(k.Curve.Params().Name, "-", ""))
	case *rsa.PublicKey:
		return fmt.Sprintf("rsa-%d", k.N.BitLen())
	case ed25519.PublicKey:
		return "ed25519"
	default:
		return fmt.Sprintf("unknown (%T)", pub)
	}
}

func (r inspection) table(w io.Writer) error {
	id := r.SPIFFEID
	if id == "" {
		id = "none (" + r.idErr + ")"
	}
	chain := "1 certificate (leaf only)"
	if r.ChainLength > 1 {
		chain = fmt.Sprintf("%d certificates, leaf first", r.ChainLength)
	}

	tw := newTable(w)
	row(tw, "File:", r.File)
	row(tw, "SPIFFE ID:", id)
	row(tw, "Serial:", r.Serial)
	row(tw, "Subject:", orDash(r.Subject))
	row(tw, "Issuer:", orDash(r.Issuer))
	row(tw, "Not before:", timestamp(r.NotBefore))
	row(tw, "Not after:", expiry(r.NotAfter, r.now))
	row(tw, "Key type:", r.KeyType)
	row(tw, "Chain:", chain)
	row(tw, "Chains to bundle:", r.Verification.summary())
	return tw.Flush()
}

// summary is the verdict in one line, e.g. "yes (bundle from server)".
func (v verification) summary() string {
	switch v.ChainsToBundle {
	case chainsUnknown:
		return "unknown (no bundle)"
	case chainsYes:
		return fmt.Sprintf("yes (bundle from %s)", v.Bundle)
	default:
		return fmt.Sprintf("no (bundle from %s): %s", v.Bundle, v.Error)
	}
}
