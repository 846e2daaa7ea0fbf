package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/meshca/meshca/internal/cli"
)

// commandReferencePath is where `make docs` writes the command reference, relative
// to the repository root.
const commandReferencePath = "docs/meshctl.md"

// newDocsCommand returns the hidden `meshctl docs` command, which writes the command
// reference generated from the command tree.
func newDocsCommand() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:    "docs",
		Short:  "Write the command reference (" + commandReferencePath + ")",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			page := commandReference()
			if out == "" {
				_, err := cmd.OutOrStdout().Write(page)
				return err
			}
			if err := os.WriteFile(out, page, 0o644); err != nil {
				return fmt.Errorf("failed to write the command reference: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file to write (default: standard output)")
	return cmd
}

// commandReference renders docs/meshctl.md from a fresh command tree. The default
// admin socket is the built-in one, whatever MESHCA_ADMIN_SOCKET says.
func commandReference() []byte {
	root := newRootCommand(time.Now)
	root.PersistentFlags().Lookup("admin-socket").DefValue = defaultAdminSocket

	var cmds []*cobra.Command
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			cmds = append(cmds, sub)
			walk(sub)
		}
	}
	walk(root)

	var b strings.Builder
	b.WriteString("# meshctl command reference\n\n")
	b.WriteString("<!-- Generated from meshctl's commands by `make docs` (meshctl docs). " +
		"Do not edit:\nchange the command in cmd/meshctl and run make docs. " +
		"A test in cmd/meshctl fails while\nthis page is stale. -->\n\n")
	b.WriteString(cli.MarkdownText(root.Long) + "\n\n")
	b.WriteString("`meshctl completion bash|zsh|fish|powershell` writes a shell " +
		"completion script.\n\n")
	b.WriteString("## Global flags\n\nEvery command takes these:\n\n")
	writeFlags(&b, root.PersistentFlags())
	b.WriteString("\n## Commands\n\n| command | what it does |\n|---|---|\n")
	for _, c := range cmds {
		fmt.Fprintf(&b, "| [`%s`](#%s) | %s |\n", c.CommandPath(), anchor(c),
			cli.MarkdownCell(c.Short))
	}
	for _, c := range cmds {
		writeCommand(&b, c)
	}
	return []byte(b.String())
}

// writeCommand writes the section of one command: what it does, how to call it,
// examples and its own flags.
func writeCommand(b *strings.Builder, c *cobra.Command) {
	fmt.Fprintf(b, "\n### %s\n\n", c.CommandPath())
	text := c.Long
	if text == "" {
		text = c.Short + "."
	}
	b.WriteString(cli.MarkdownText(text) + "\n")
	if !c.Runnable() {
		var subs []string
		for _, sub := range c.Commands() {
			if !sub.Hidden && sub.Name() != "help" {
				subs = append(subs, fmt.Sprintf("[`%s`](#%s)", sub.Name(), anchor(sub)))
			}
		}
		fmt.Fprintf(b, "\nSubcommands: %s.\n", strings.Join(subs, ", "))
		return
	}
	fmt.Fprintf(b, "\n```\n%s\n```\n", c.UseLine())
	if c.Example != "" {
		lines := strings.Split(strings.TrimRight(c.Example, "\n"), "\n")
		for i, l := range lines {
			lines[i] = strings.TrimPrefix(l, "  ")
		}
		fmt.Fprintf(b, "\nExamples:\n\n```sh\n%s\n```\n", strings.Join(lines, "\n"))
	}
	local := pflag.NewFlagSet(c.Name(), pflag.ContinueOnError)
	c.NonInheritedFlags().VisitAll(func(f *pflag.Flag) {
		if f.Name != "help" {
			local.AddFlag(f)
		}
	})
	if local.HasFlags() {
		b.WriteString("\n")
		writeFlags(b, local)
	}
}

// writeFlags writes a table of flags, sorted by name.
func writeFlags(b *strings.Builder, fs *pflag.FlagSet) {
	b.WriteString("| flag | type | default | description |\n|---|---|---|---|\n")
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" {
			return
		}
		name := "`--" + f.Name + "`"
		if f.Shorthand != "" {
			name = "`-" + f.Shorthand + "`, " + name
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s |\n", name, cli.FlagType(f), cli.FlagDefault(f),
			cli.MarkdownCell(f.Usage))
	})
}

// anchor is the GitHub heading anchor of a command's section.
func anchor(c *cobra.Command) string {
	return strings.ReplaceAll(c.CommandPath(), " ", "-")
}
