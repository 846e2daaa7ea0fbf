package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/buildinfo"
	"github.com/meshca/meshca/internal/cli"
)

// Defaults of the global flags.
const (
	adminSocketEnv     = "MESHCA_ADMIN_SOCKET"
	defaultAdminSocket = "./meshca-data/admin.sock"
	defaultTimeout     = 10 * time.Second
)

// globals are the flags every command shares, and the clock, which tests replace so
// that "time left" is deterministic.
type globals struct {
	adminSocket string
	output      format
	timeout     time.Duration
	now         func() time.Time
}

// newRootCommand builds the whole command tree. now is the clock used for every
// "time left" and for certificate verification.
func newRootCommand(now func() time.Time) *cobra.Command {
	g := &globals{output: formatTable, now: now}
	root := &cobra.Command{
		Use:   "meshctl",
		Short: "Operate a meshca certificate authority",
		Long: "meshctl talks to a running meshca server over its admin socket: it shows the\n" +
			"authorities, exports the trust bundle, mints SVIDs for workloads outside\n" +
			"Kubernetes, lists what was issued and manages authorization policies.\n" +
			"`cert inspect` and `policy validate` also work offline.",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       buildinfo.String(),
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return g.validate()
		},
	}
	root.SetVersionTemplate("meshctl {{.Version}}\n")

	socket := os.Getenv(adminSocketEnv)
	if socket == "" {
		socket = defaultAdminSocket
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.adminSocket, "admin-socket", socket,
		"Unix socket of the meshca admin API (env "+adminSocketEnv+")")
	pf.VarP(&g.output, "output", "o", "output format: table, json or yaml")
	pf.DurationVar(&g.timeout, "timeout", defaultTimeout, "deadline of each admin API call")
	_ = root.RegisterFlagCompletionFunc("output",
		cobra.FixedCompletions(formatNames, cobra.ShellCompDirectiveNoFileComp))

	root.AddCommand(newCACommand(g), newBundleCommand(g), newSVIDCommand(g),
		newCertCommand(g), newPolicyCommand(g), newDocsCommand(),
		cli.NewVersionCommand("meshctl"))
	return root
}

// validate checks the global flags before any command runs.
func (g *globals) validate() error {
	if g.timeout <= 0 {
		return fmt.Errorf("--timeout %s must be positive", g.timeout)
	}
	if g.adminSocket == "" {
		return errors.New("--admin-socket must not be empty")
	}
	return nil
}
