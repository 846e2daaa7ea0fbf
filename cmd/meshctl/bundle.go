package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/api/meshcav1"
)

// Formats of `bundle export`.
const (
	bundlePEM    = "pem"
	bundleSPIFFE = "spiffe"
)

func newBundleCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Work with the trust bundle",
	}
	var bundleFormat, out string
	export := &cobra.Command{
		Use:   "export",
		Short: "Write the trust bundle as PEM roots or as a SPIFFE bundle (JWKS)",
		Long: "Write the trust bundle: every root currently trusted. --format pem writes the\n" +
			"certificates (for openssl, Envoy's trusted_ca); --format spiffe writes the\n" +
			"SPIFFE bundle document, a JWKS, for federation and go-spiffe. -o is ignored.",
		Example: "  meshctl bundle export --out bundle.pem\n" +
			"  meshctl bundle export --format spiffe --out cluster.local.jwks",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if bundleFormat != bundlePEM && bundleFormat != bundleSPIFFE {
				return fmt.Errorf("--format %q is not one of pem, spiffe", bundleFormat)
			}
			b, err := g.fetchBundle(cmd.Context())
			if err != nil {
				return err
			}
			data, err := encodeBundle(b, bundleFormat)
			if err != nil {
				return err
			}
			if out == "" {
				_, err = cmd.OutOrStdout().Write(data)
				return err
			}
			// The bundle is public: readable by everyone, replaced atomically.
			return writeFile(out, data, 0o644, true)
		},
	}
	export.Flags().StringVar(&bundleFormat, "format", bundlePEM, "pem or spiffe")
	export.Flags().StringVar(&out, "out", "", "write to this file instead of stdout")
	_ = export.RegisterFlagCompletionFunc("format", cobra.FixedCompletions(
		[]string{bundlePEM, bundleSPIFFE}, cobra.ShellCompDirectiveNoFileComp))
	cmd.AddCommand(export)
	return cmd
}

// fetchBundle reads the trust bundle from the server.
func (g *globals) fetchBundle(ctx context.Context) (*x509bundle.Bundle, error) {
	c, err := g.dialAdmin()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	resp, err := call(ctx, c, c.api.GetBundle, &meshcav1.GetBundleRequest{})
	if err != nil {
		return nil, fmt.Errorf("failed to get trust bundle: %w", err)
	}
	return bundleFromProto(resp)
}

// bundleFromProto checks and parses the server's bundle.
func bundleFromProto(resp *meshcav1.GetBundleResponse) (*x509bundle.Bundle, error) {
	td, err := spiffeid.TrustDomainFromString(resp.GetTrustDomain())
	if err != nil {
		return nil, fmt.Errorf("server sent trust domain %q: %w", resp.GetTrustDomain(), err)
	}
	roots := make([]*x509.Certificate, 0, len(resp.GetX509Authorities()))
	for i, der := range resp.GetX509Authorities() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("server sent an unparsable root (#%d): %w", i+1, err)
		}
		roots = append(roots, c)
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("server sent an empty trust bundle")
	}
	return x509bundle.FromX509Authorities(td, roots), nil
}

// encodeBundle renders the bundle as PEM roots or as an indented SPIFFE bundle.
func encodeBundle(b *x509bundle.Bundle, bundleFormat string) ([]byte, error) {
	if bundleFormat == bundlePEM {
		return pemCerts(b.X509Authorities()), nil
	}
	doc, err := spiffebundle.FromX509Authorities(b.TrustDomain(), b.X509Authorities()).Marshal()
	if err != nil {
		return nil, fmt.Errorf("failed to encode SPIFFE bundle: %w", err)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, doc, "", "  "); err != nil {
		return nil, fmt.Errorf("failed to indent SPIFFE bundle: %w", err)
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}
