package main

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const runbookPath = "../../docs/rotation.md"

// runbookCommands returns the lines of every ```sh block of a Markdown file, in order.
func runbookCommands(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var out []string
	in := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "```sh":
			in = true
		case strings.HasPrefix(line, "```"):
			in = false
		case in && line != "" && !strings.HasPrefix(line, "#"):
			out = append(out, line)
		}
	}
	return out
}

// TestRotationRunbook runs every command of docs/rotation.md, in order, against a
// real server: the whole rotation, then the recovery recipes. Only meshctl commands
// and the export of the admin socket may appear in the runbook's sh blocks.
func TestRotationRunbook(t *testing.T) {
	socket := startServer(t)
	cmds := runbookCommands(t, runbookPath)
	require.GreaterOrEqual(t, len(cmds), 10, "the runbook has its commands")
	var steps []string
	for _, line := range cmds {
		if v, ok := strings.CutPrefix(line, "export "+adminSocketEnv+"="); ok {
			require.True(t, filepath.IsAbs(v), "the runbook exports an absolute socket path")
			continue
		}
		args := strings.Fields(line)
		require.Equal(t, "meshctl", args[0], "runbook line %q is not a meshctl command", line)
		res := execute(t, time.Now(), append([]string{"--admin-socket", socket}, args[1:]...)...)
		require.NoError(t, res.err, "runbook command %q failed\nstdout: %s", line, res.stdout)
		if len(args) > 3 && args[1] == "ca" && args[2] == "rotate" && args[3] != "status" &&
			args[3] != "log" {
			steps = append(steps, args[3])
		}
	}
	require.Equal(t, []string{"prepare", "activate", "remove", "prepare", "retire", "remove",
		"prepare", "activate", "remove"}, steps)
	require.Len(t, bundleCerts(t, socket), 1, "after the runbook one root is trusted")
}
