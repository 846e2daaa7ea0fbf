package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/buildinfo"
)

// NewVersionCommand returns the `version` command of a binary named name.
func NewVersionCommand(name string) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of " + name,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), name, buildinfo.String())
			return err
		},
	}
}
