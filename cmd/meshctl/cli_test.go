package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestFlagErrors checks that bad flags are refused before anything is contacted or
// generated, each with the message that names the flag.
func TestFlagErrors(t *testing.T) {
	absent := filepath.Join(t.TempDir(), "absent.sock")
	out := filepath.Join(t.TempDir(), "creds")
	const id = "spiffe://cluster.local/ns/a/sa/b"
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{{
		name:    "an unknown output format",
		args:    []string{"-o", "xml", "ca", "status"},
		wantErr: `invalid argument "xml" for "-o, --output" flag: must be one of table, json, yaml`,
	}, {
		name:    "a zero timeout",
		args:    []string{"--timeout", "0s", "ca", "status"},
		wantErr: "--timeout 0s must be positive",
	}, {
		name:    "an empty admin socket",
		args:    []string{"--admin-socket", "", "ca", "status"},
		wantErr: "--admin-socket must not be empty",
	}, {
		name:    "an unknown bundle format",
		args:    []string{"bundle", "export", "--format", "der"},
		wantErr: `--format "der" is not one of pem, spiffe`,
	}, {
		name:    "mint without a SPIFFE ID",
		args:    []string{"svid", "mint", "--out", out},
		wantErr: `required flag(s) "spiffe-id" not set`,
	}, {
		name:    "mint without an output directory",
		args:    []string{"svid", "mint", "--spiffe-id", id},
		wantErr: `required flag(s) "out" not set`,
	}, {
		name:    "mint with an unknown key type",
		args:    []string{"svid", "mint", "--spiffe-id", id, "--out", out, "--key-type", "dsa"},
		wantErr: `--key-type "dsa" is not one of ec-p256, ec-p384, rsa-2048`,
	}, {
		name:    "mint with a negative TTL",
		args:    []string{"svid", "mint", "--spiffe-id", id, "--out", out, "--ttl", "-1h"},
		wantErr: "--ttl -1h0m0s must not be negative",
	}, {
		name:    "list with a negative limit",
		args:    []string{"cert", "list", "--limit", "-1"},
		wantErr: "--limit -1 is out of range (0 to 2147483647)",
	}, {
		name:    "inspect without a file",
		args:    []string{"cert", "inspect"},
		wantErr: "accepts 1 arg(s), received 0",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := execute(t, time.Now(), append([]string{"--admin-socket", absent}, tt.args...)...)
			require.EqualError(t, res.err, tt.wantErr)
			require.NoDirExists(t, out)
		})
	}
}

func TestInspectFileErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	require.NoError(t, os.WriteFile(notPEM, []byte("hello"), 0o644))
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{{
		name:    "a file that is not PEM",
		args:    []string{"cert", "inspect", notPEM},
		wantErr: notPEM + ": no PEM certificate found",
	}, {
		name:    "a bundle that is not PEM",
		args:    []string{"cert", "inspect", fixtureChain, "--bundle", notPEM},
		wantErr: "failed to read --bundle: " + notPEM + ": no PEM certificate found",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := execute(t, fixtureNow, tt.args...)
			require.EqualError(t, res.err, tt.wantErr)
		})
	}
	res := execute(t, fixtureNow, "cert", "inspect", filepath.Join(dir, "absent.pem"))
	require.ErrorIs(t, res.err, fs.ErrNotExist)
}

func TestDefaultAdminSocket(t *testing.T) {
	t.Setenv(adminSocketEnv, "")
	flag := newRootCommand(time.Now).PersistentFlags().Lookup("admin-socket")
	require.Equal(t, defaultAdminSocket, flag.DefValue)

	t.Setenv(adminSocketEnv, "/run/meshca/admin.sock")
	flag = newRootCommand(time.Now).PersistentFlags().Lookup("admin-socket")
	require.Equal(t, "/run/meshca/admin.sock", flag.DefValue)
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		t.Run(shell, func(t *testing.T) {
			res := execute(t, time.Now(), "completion", shell)
			require.NoError(t, res.err)
			require.Contains(t, res.stdout, "meshctl")
		})
	}
	// Flag values complete from fixed lists.
	res := execute(t, time.Now(), "__complete", "svid", "mint", "--key-type", "")
	require.NoError(t, res.err)
	require.Equal(t, []string{"ec-p256", "ec-p384", "rsa-2048", ":4"},
		strings.Fields(res.stdout))
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "svid.key")

	require.NoError(t, writeFile(path, []byte("one"), 0o600, false))
	assertMode(t, path, 0o600)

	err := writeFile(path, []byte("two"), 0o600, false)
	require.ErrorIs(t, err, fs.ErrExist)
	assertContent(t, path, "one")

	// Overwriting replaces a wider mode, it does not inherit it.
	require.NoError(t, os.Chmod(path, 0o644))
	require.NoError(t, writeFile(path, []byte("three"), 0o600, true))
	assertMode(t, path, 0o600)
	assertContent(t, path, "three")

	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file is left behind")

	err = writeFile(filepath.Join(dir, "absent", "f"), nil, 0o600, true)
	require.True(t, errors.Is(err, fs.ErrNotExist), "error: %v", err)
}

func assertContent(t *testing.T, path, want string) {
	t.Helper()
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, want, string(got))
}

// TestVersion prints the version without a server: the flag and the command agree.
func TestVersion(t *testing.T) {
	byCommand := execute(t, time.Now(), "version")
	require.NoError(t, byCommand.err)
	byFlag := execute(t, time.Now(), "--version")
	require.NoError(t, byFlag.err)
	require.Equal(t, byCommand.stdout, byFlag.stdout)
	require.True(t, strings.HasPrefix(byCommand.stdout, "meshctl "), "%q", byCommand.stdout)
	require.Contains(t, byCommand.stdout, runtime.Version())
}
