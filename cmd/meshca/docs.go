package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/meshca/meshca/internal/cli"
)

// configReferencePath is where `make docs` writes the configuration reference,
// relative to the repository root.
const configReferencePath = "docs/configuration.md"

// newDocsCommand returns the hidden `meshca docs` command: `meshca docs config`
// writes the configuration reference generated from the flags of `meshca server`.
func newDocsCommand() *cobra.Command {
	docs := &cobra.Command{
		Use:    "docs",
		Short:  "Write reference pages generated from the commands",
		Hidden: true,
		Args:   cobra.NoArgs,
	}
	var out string
	config := &cobra.Command{
		Use:   "config",
		Short: "Write the configuration reference of `meshca server` (" + configReferencePath + ")",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			page := configReference()
			if out == "" {
				_, err := cmd.OutOrStdout().Write(page)
				return err
			}
			if err := os.WriteFile(out, page, 0o644); err != nil {
				return fmt.Errorf("failed to write the configuration reference: %w", err)
			}
			return nil
		},
	}
	config.Flags().StringVarP(&out, "out", "o", "", "file to write (default: standard output)")
	docs.AddCommand(config)
	return docs
}

// configReference renders docs/configuration.md from a fresh `meshca server`
// command, so the page lists exactly the flags the binary has, with their defaults.
func configReference() []byte {
	var flags []*pflag.Flag
	newServerCommand().Flags().VisitAll(func(f *pflag.Flag) {
		if f.Name != "help" {
			flags = append(flags, f)
		}
	})

	var b strings.Builder
	b.WriteString(configIntro)
	b.WriteString("| flag | config key | type | default | description |\n")
	b.WriteString("|---|---|---|---|---|\n")
	for _, f := range flags {
		key := "`" + f.Name + "`"
		if f.Name == configFlag {
			key = "flag only"
		}
		fmt.Fprintf(&b, "| `--%s` | %s | %s | %s | %s |\n", f.Name, key, cli.FlagType(f),
			cli.FlagDefault(f), cli.MarkdownCell(f.Usage))
	}
	b.WriteString(configValues)
	b.WriteString("```yaml\n")
	for _, f := range flags {
		if f.Name != configFlag {
			fmt.Fprintf(&b, "%s: %s\n", f.Name, cli.FlagYAML(f))
		}
	}
	b.WriteString("```\n")
	return []byte(b.String())
}

const configIntro = "# Configuration reference\n\n" +
	"<!-- Generated from the flags of `meshca server` by `make docs` (meshca docs config).\n" +
	"Do not edit: change the flag in cmd/meshca and run make docs. A test in cmd/meshca\n" +
	"fails while this page is stale. -->\n\n" +
	"`meshca server` reads its configuration from three places, each overriding the next:\n" +
	"flags on the command line, the YAML file named by `--config`, and the defaults below.\n" +
	"The file's keys are the flag names without the dashes:\n\n" +
	"```yaml\n" +
	"data-dir: /var/lib/meshca\n" +
	"trust-domain: prod.example.com\n" +
	"leaf-ttl: 30m\n" +
	"server-dns-names: [meshca.meshca.svc, meshca.meshca.svc.cluster.local]\n" +
	"```\n\n" +
	"The server stops before it starts anything, with a message naming the file and the\n" +
	"key, on a file that is not YAML, an unknown key (`config` itself included), an empty\n" +
	"value, a nested mapping, or a value the flag cannot parse. All values are then\n" +
	"checked together (for example `leaf-ttl` at most `max-ttl`, a valid trust domain, a\n" +
	"known key type), and every problem is reported at once.\n\n"

const configValues = "\nValues:\n\n" +
	"- **duration**: Go syntax, such as `90s`, `30m`, `1h30m`, `8760h`; no days.\n" +
	"- **list of strings**: a YAML list, or one comma-separated string. On the command\n" +
	"  line, repeat the flag or separate the values with commas. A list given replaces\n" +
	"  the default; it does not add to it.\n" +
	"- **bool**: `true` or `false`. On the command line the flag alone means true; write\n" +
	"  `--flag=false` to turn off a flag whose default is true.\n\n" +
	"A config file equal to the defaults:\n\n"
