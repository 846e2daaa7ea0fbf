package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/ca"
)

// The files `svid mint` writes into --out.
const (
	svidCertFile   = "svid.pem"
	svidKeyFile    = "svid.key"
	svidBundleFile = "bundle.pem"
)

// mintKeyTypes are the key types `svid mint` offers.
var mintKeyTypes = []string{string(ca.KeyECP256), string(ca.KeyECP384), string(ca.KeyRSA2048)}

// mintOptions are the flags of `svid mint`.
type mintOptions struct {
	spiffeID string
	ttl      time.Duration
	keyType  string
	outDir   string
	force    bool
}

// mintResult is the output of `meshctl svid mint`: never the key, only where it is.
type mintResult struct {
	SPIFFEID string    `json:"spiffe_id"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"not_after"`
	CertFile string    `json:"cert_file"`
	KeyFile  string    `json:"key_file"`
	// BundleFile holds the trusted roots.
	BundleFile string `json:"bundle_file"`
}

func newSVIDCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "svid",
		Short: "Mint X.509-SVIDs for workloads outside Kubernetes",
	}
	var o mintOptions
	mint := &cobra.Command{
		Use:   "mint",
		Short: "Generate a key locally and have meshca certify it",
		Long: "Generate a private key on this machine, send only its public key to meshca and\n" +
			"write the issued chain (leaf first), the key (PKCS #8, mode 0600) and the trust\n" +
			"bundle into --out as svid.pem, svid.key and bundle.pem.",
		Example: "  meshctl svid mint --spiffe-id spiffe://cluster.local/ns/db/sa/backup " +
			"--out ./backup-svid",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := mintSVID(cmd.Context(), g, o)
			if err != nil {
				return err
			}
			return render(cmd.OutOrStdout(), g.output, res, res.table(g.now()))
		},
	}
	fs := mint.Flags()
	fs.StringVar(&o.spiffeID, "spiffe-id", "", "SPIFFE ID to certify (required)")
	fs.DurationVar(&o.ttl, "ttl", 0, "requested lifetime, capped by the server "+
		"(default: the server's leaf TTL)")
	fs.StringVar(&o.keyType, "key-type", string(ca.KeyECP256),
		"key type: "+strings.Join(mintKeyTypes, ", "))
	fs.StringVar(&o.outDir, "out", "", "directory for the files, created 0700 if missing "+
		"(required)")
	fs.BoolVar(&o.force, "force", false, "overwrite existing files")
	_ = mint.MarkFlagRequired("spiffe-id")
	_ = mint.MarkFlagRequired("out")
	_ = mint.MarkFlagDirname("out")
	_ = mint.RegisterFlagCompletionFunc("key-type",
		cobra.FixedCompletions(mintKeyTypes, cobra.ShellCompDirectiveNoFileComp))
	cmd.AddCommand(mint)
	return cmd
}

// validate checks the flags before anything is generated or sent.
func (o mintOptions) validate() error {
	var errs []error
	if o.ttl < 0 {
		errs = append(errs, fmt.Errorf("--ttl %s must not be negative", o.ttl))
	}
	if !slices.Contains(mintKeyTypes, o.keyType) {
		errs = append(errs, fmt.Errorf("--key-type %q is not one of %s", o.keyType,
			strings.Join(mintKeyTypes, ", ")))
	}
	return errors.Join(errs...)
}

// paths returns the certificate, key and bundle paths, in the order they are written.
func (o mintOptions) paths() (cert, key, bundle string) {
	return filepath.Join(o.outDir, svidCertFile), filepath.Join(o.outDir, svidKeyFile),
		filepath.Join(o.outDir, svidBundleFile)
}

// mintSVID generates the key, has the server sign it and writes the three files. It
// checks for existing files first, so a refused overwrite costs no issuance, and it
// writes nothing when the server refuses.
func mintSVID(ctx context.Context, g *globals, o mintOptions) (mintResult, error) {
	if err := o.validate(); err != nil {
		return mintResult{}, err
	}
	certPath, keyPath, bundlePath := o.paths()
	if !o.force {
		for _, p := range []string{certPath, keyPath, bundlePath} {
			if _, err := os.Lstat(p); err == nil {
				return mintResult{}, fmt.Errorf("%s already exists (use --force to overwrite)", p)
			}
		}
	}

	key, err := ca.GenerateKey(ca.KeyType(o.keyType))
	if err != nil {
		return mintResult{}, fmt.Errorf("failed to generate %s key: %w", o.keyType, err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return mintResult{}, fmt.Errorf("failed to encode public key: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return mintResult{}, fmt.Errorf("failed to encode private key: %w", err)
	}

	req := &meshcav1.MintX509SVIDRequest{SpiffeId: o.spiffeID, PublicKey: pub}
	if o.ttl > 0 {
		req.Ttl = durationpb.New(o.ttl)
	}
	resp, err := mintRPC(ctx, g, req)
	if err != nil {
		return mintResult{}, err
	}
	chain, err := parseDERCerts(resp.GetCertChain())
	if err != nil {
		return mintResult{}, fmt.Errorf("server sent an unparsable chain: %w", err)
	}
	roots, err := parseDERCerts(resp.GetBundle())
	if err != nil {
		return mintResult{}, fmt.Errorf("server sent an unparsable bundle: %w", err)
	}

	if err := os.MkdirAll(o.outDir, 0o700); err != nil {
		return mintResult{}, fmt.Errorf("failed to create output directory: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	err = writeAll(o.force, []fileContent{
		{path: keyPath, data: keyPEM, perm: 0o600},
		{path: certPath, data: pemCerts(chain), perm: 0o644},
		{path: bundlePath, data: pemCerts(roots), perm: 0o644},
	})
	if err != nil {
		return mintResult{}, err
	}
	return mintResult{
		SPIFFEID:   resp.GetSpiffeId(),
		Serial:     ca.SerialHex(chain[0].SerialNumber),
		NotAfter:   chain[0].NotAfter.UTC(),
		CertFile:   certPath,
		KeyFile:    keyPath,
		BundleFile: bundlePath,
	}, nil
}

func mintRPC(ctx context.Context, g *globals, req *meshcav1.MintX509SVIDRequest) (
	*meshcav1.MintX509SVIDResponse, error) {
	c, err := g.dialAdmin()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	resp, err := call(ctx, c, c.api.MintX509SVID, req)
	if err != nil {
		return nil, fmt.Errorf("failed to mint SVID: %w", err)
	}
	if len(resp.GetCertChain()) == 0 || len(resp.GetBundle()) == 0 {
		return nil, errors.New("server sent no certificate chain or no bundle")
	}
	return resp, nil
}

// fileContent is one file to write.
type fileContent struct {
	path string
	data []byte
	perm fs.FileMode
}

// writeAll writes the files in order. If one fails, the ones written before it are
// removed, so that no half set of credentials is left behind.
func writeAll(overwrite bool, files []fileContent) error {
	for i, f := range files {
		if err := writeFile(f.path, f.data, f.perm, overwrite); err != nil {
			for _, done := range files[:i] {
				_ = os.Remove(done.path)
			}
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%w (use --force to overwrite)", err)
			}
			return err
		}
	}
	return nil
}

func (r mintResult) table(now time.Time) func(io.Writer) error {
	return func(w io.Writer) error {
		tw := newTable(w)
		row(tw, "SPIFFE ID:", r.SPIFFEID)
		row(tw, "Serial:", r.Serial)
		row(tw, "Not after:", expiry(r.NotAfter, now))
		row(tw, "Certificate:", r.CertFile)
		row(tw, "Key:", r.KeyFile)
		row(tw, "Bundle:", r.BundleFile)
		return tw.Flush()
	}
}

func parseDERCerts(ders [][]byte) ([]*x509.Certificate, error) {
	certs := make([]*x509.Certificate, 0, len(ders))
	for _, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	return certs, nil
}
