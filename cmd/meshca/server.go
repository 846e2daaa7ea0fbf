package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/buildinfo"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/server"
)

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "meshca",
		Short:         "meshca: SPIFFE identities and mTLS policy for Kubernetes workloads",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       buildinfo.String(),
	}
	root.SetVersionTemplate("meshca {{.Version}}\n")
	root.AddCommand(newServerCommand(), newDocsCommand(), cli.NewVersionCommand("meshca"))
	return root
}

// configFlag names the config file; it is a flag only, never a key of the file.
const configFlag = "config"

// serverFlags are the raw flag values of `meshca server`, before validation.
type serverFlags struct {
	configFile     string
	dataDir        string
	trustDomain    string
	adminSocket    string
	grpcAddr       string
	httpAddr       string
	serverDNSNames []string
	leafTTL        time.Duration
	maxTTL         time.Duration
	rootTTL        time.Duration
	caKeyType      string
	caCertFile     string
	caKeyFile      string
	caBundleFile   string
	logFormat      string
	logLevel       string
	kubeconfig     string
	tokenAudience  string
	tokenCacheTTL  time.Duration
	kubeQPS        float32
	kubeBurst      int
	defaultDeny    bool
	publishBundle  bool
	expiryWarning  time.Duration
	autoRotate     bool
	auditRetention time.Duration
}

func newServerCommand() *cobra.Command {
	var f serverFlags
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the meshca control plane and certificate authority",
		Args:  cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			if f.configFile == "" {
				return nil
			}
			return cli.ApplyConfigFile(f.configFile, cmd.Flags(), configFlag)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config()
			if err != nil {
				return err
			}
			srv, err := server.New(cfg)
			if err != nil {
				return err
			}
			return srv.Run(cmd.Context())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.configFile, configFlag, "", "YAML file whose keys are these flag names; "+
		"flags given on the command line win")
	fs.StringVar(&f.dataDir, "data-dir", "./meshca-data", "directory of the embedded store")
	fs.StringVar(&f.trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain")
	fs.StringVar(&f.adminSocket, "admin-socket", "",
		"Unix socket of the admin API, mode 0600 (default <data-dir>/admin.sock)")
	fs.StringVar(&f.grpcAddr, "grpc-addr", ":15012", "main TLS gRPC listen address")
	fs.StringVar(&f.httpAddr, "http-addr", "127.0.0.1:15014",
		"HTTP listen address for /healthz, /readyz and /metrics")
	fs.StringSliceVar(&f.serverDNSNames, "server-dns-names",
		[]string{"localhost", "meshca.meshca.svc", "127.0.0.1"},
		"DNS names and IPs in meshca's own serving certificate")
	fs.DurationVar(&f.leafTTL, "leaf-ttl", ca.DefaultLeafTTL, "default workload certificate lifetime")
	fs.DurationVar(&f.maxTTL, "max-ttl", ca.DefaultMaxLeafTTL, "longest workload certificate lifetime")
	fs.DurationVar(&f.rootTTL, "root-ttl", ca.DefaultRootTTL, "lifetime of a root meshca creates")
	fs.StringVar(&f.caKeyType, "ca-key-type", string(ca.DefaultKeyType),
		"key type of a root meshca creates: ec-p256, ec-p384, rsa-2048, rsa-3072")
	fs.StringVar(&f.caCertFile, "ca-cert-file", "",
		"on first start, import this CA certificate (PEM, then its issuers) instead of a new root")
	fs.StringVar(&f.caKeyFile, "ca-key-file", "", "private key of --ca-cert-file (PEM)")
	fs.StringVar(&f.caBundleFile, "ca-bundle-file", "",
		"roots to trust when --ca-cert-file is an intermediate (PEM)")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "",
		"kubeconfig for the Kubernetes API (default: in-cluster, then $KUBECONFIG; "+
			"with neither, token authentication is disabled)")
	fs.StringVar(&f.tokenAudience, "token-audience", "meshca",
		"audience that workload tokens must be issued for")
	fs.DurationVar(&f.tokenCacheTTL, "token-cache-ttl", 10*time.Second,
		"how long a successful token review is reused (never past the token's expiry)")
	fs.Float32Var(&f.kubeQPS, "kube-qps", 500, "Kubernetes client requests per second")
	fs.IntVar(&f.kubeBurst, "kube-burst", 1000, "Kubernetes client burst")
	fs.BoolVar(&f.defaultDeny, "default-deny", false,
		"deny every request to a workload that no ALLOW policy selects")
	fs.DurationVar(&f.expiryWarning, "authority-expiry-warning",
		server.DefaultAuthorityExpiryWarning,
		"log a warning, at start and daily, about every authority that expires within "+
			"this long (0: never)")
	fs.BoolVar(&f.autoRotate, "auto-rotate", false,
		"rotate the root by itself: prepare a new one at half of the active authority's "+
			"lifetime, activate it when a sixth remains once every stream has its bundle")
	fs.DurationVar(&f.auditRetention, "audit-retention", server.DefaultAuditRetention,
		"how long to keep the audit records of certificates after they expire "+
			"(0: forever; pruned at start and hourly)")
	fs.BoolVar(&f.publishBundle, "publish-bundle", true,
		"keep the ConfigMap meshca-root-cert (the roots in PEM) in every namespace "+
			"when a Kubernetes API is configured")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	return cmd
}

// config validates the flags and builds the server configuration. Nothing is
// started before every value has been checked.
func (f *serverFlags) config() (server.Config, error) {
	var errs []error
	td, err := spiffeid.TrustDomainFromString(f.trustDomain)
	if err != nil {
		errs = append(errs, fmt.Errorf("--trust-domain %q: %w", f.trustDomain, err))
	}
	log, err := cli.NewLogger(os.Stderr, f.logFormat, f.logLevel)
	if err != nil {
		errs = append(errs, err)
	}
	if f.leafTTL <= 0 || f.maxTTL <= 0 || f.rootTTL <= 0 {
		errs = append(errs, errors.New("--leaf-ttl, --max-ttl and --root-ttl must be positive"))
	}
	if f.leafTTL > f.maxTTL {
		errs = append(errs, fmt.Errorf("--leaf-ttl %s is longer than --max-ttl %s",
			f.leafTTL, f.maxTTL))
	}
	kt := ca.KeyType(f.caKeyType)
	switch kt {
	case ca.KeyECP256, ca.KeyECP384, ca.KeyRSA2048, ca.KeyRSA3072:
	default:
		errs = append(errs, fmt.Errorf("--ca-key-type %q is not one of ec-p256, ec-p384, "+
			"rsa-2048, rsa-3072", f.caKeyType))
	}
	if f.tokenAudience == "" {
		errs = append(errs, errors.New("--token-audience must not be empty"))
	}
	if f.tokenCacheTTL < 0 || f.kubeQPS <= 0 || f.kubeBurst <= 0 {
		errs = append(errs, errors.New("--token-cache-ttl must not be negative, "+
			"--kube-qps and --kube-burst must be positive"))
	}
	if f.auditRetention < 0 {
		errs = append(errs, fmt.Errorf("--audit-retention %s must not be negative",
			f.auditRetention))
	}
	if f.expiryWarning < 0 {
		errs = append(errs, fmt.Errorf("--authority-expiry-warning %s must not be negative",
			f.expiryWarning))
	}
	imp, err := f.caImport()
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return server.Config{}, err
	}
	return server.Config{
		DataDir:                f.dataDir,
		TrustDomain:            td,
		AdminSocket:            f.adminSocket,
		GRPCAddr:               f.grpcAddr,
		HTTPAddr:               f.httpAddr,
		ServerDNSNames:         f.serverDNSNames,
		DefaultDeny:            f.defaultDeny,
		PublishBundle:          f.publishBundle,
		AuthorityExpiryWarning: f.expiryWarning,
		AutoRotate:             f.autoRotate,
		AuditRetention:         f.auditRetention,
		Logger:                 log,
		CA: ca.Config{
			DefaultTTL: f.leafTTL, MaxTTL: f.maxTTL, RootTTL: f.rootTTL,
			KeyType: kt, Import: imp,
		},
		Kube: server.KubeConfig{
			Kubeconfig: f.kubeconfig, QPS: f.kubeQPS, Burst: f.kubeBurst,
			Audience: f.tokenAudience, CacheTTL: f.tokenCacheTTL,
		},
	}, nil
}

func (f *serverFlags) caImport() (*ca.Import, error) {
	if f.caCertFile == "" && f.caKeyFile == "" {
		if f.caBundleFile != "" {
			return nil, errors.New("--ca-bundle-file needs --ca-cert-file and --ca-key-file")
		}
		return nil, nil
	}
	if f.caCertFile == "" || f.caKeyFile == "" {
		return nil, errors.New("--ca-cert-file and --ca-key-file go together")
	}
	var imp ca.Import
	var err error
	if imp.CertPEM, err = os.ReadFile(f.caCertFile); err != nil {
		return nil, fmt.Errorf("--ca-cert-file: %w", err)
	}
	if imp.KeyPEM, err = os.ReadFile(f.caKeyFile); err != nil {
		return nil, fmt.Errorf("--ca-key-file: %w", err)
	}
	if f.caBundleFile != "" {
		if imp.BundlePEM, err = os.ReadFile(f.caBundleFile); err != nil {
			return nil, fmt.Errorf("--ca-bundle-file: %w", err)
		}
	}
	return &imp, nil
}
