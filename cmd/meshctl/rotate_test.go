package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshca/meshca/api/meshcav1"
)

func fixedRotation() *meshcav1.GetRotationStatusResponse {
	auths := fixedStatus().Authorities
	prepared := &meshcav1.Authority{
		Id:                "c0ffee0123456789",
		State:             "prepared",
		Subject:           "CN=meshca root cluster.local,O=meshca",
		FingerprintSha256: "c0ffee0123456789aabbccddeeff00112233445566778899aabbccddeeff0011",
		NotBefore:         ts("2026-03-01T11:00:00Z"),
		NotAfter:          ts("2036-03-01T11:00:00Z"),
		Root:              true,
	}
	return &meshcav1.GetRotationStatusResponse{
		Authorities: []*meshcav1.AuthorityRotation{
			{Authority: auths[0], LiveLeaves: 12, SafeToRemoveAt: ts("2026-03-01T12:45:00Z")},
			{Authority: auths[1]},
			{Authority: prepared, StreamsAcked: 3, StreamsTotal: 5},
		},
		NextStep:     "activate",
		NextStepSafe: false,
		WaitingFor:   "2 of 5 streams to acknowledge the bundle with c0ffee0123456789",
	}
}

func TestGoldenRotateStatus(t *testing.T) {
	st := rotationFromProto(fixedRotation(), goldenNow)
	for _, f := range []format{formatTable, formatJSON} {
		t.Run(string(f), func(t *testing.T) {
			var buf bytes.Buffer
			require.NoError(t, render(&buf, f, st, st.table(goldenNow)))
			assertGolden(t, "rotate-status."+string(f)+".golden", buf.Bytes())
		})
	}

	// Waiting for removal names the time it becomes safe.
	resp := fixedRotation()
	resp.Authorities = resp.Authorities[:2]
	resp.NextStep = "remove"
	resp.WaitingFor = "12 certificates that need 3f1c0b9a7d2e4c58 to expire"
	resp.SafeAt = ts("2026-03-01T12:45:00Z")
	st = rotationFromProto(resp, goldenNow)
	var buf bytes.Buffer
	require.NoError(t, render(&buf, formatTable, st, st.table(goldenNow)))
	assertGolden(t, "rotate-status-remove.table.golden", buf.Bytes())
}

func TestGoldenRotateStep(t *testing.T) {
	res := rotateResult{
		Step:      "activate",
		Authority: authorityFromProto(fixedRotation().Authorities[2].Authority, goldenNow),
		Warning: "forced: 2 of 5 streams have not acknowledged a bundle containing authority " +
			"c0ffee0123456789; a workload whose bundle lacks the new root rejects every peer " +
			"certificate the new authority signs, so its connections fail until it gets the bundle",
		Next: nextCommand["activate"],
	}
	res.Authority.State = "active"
	for _, f := range []format{formatTable, formatJSON} {
		t.Run(string(f), func(t *testing.T) {
			var buf bytes.Buffer
			require.NoError(t, render(&buf, f, res, res.table))
			assertGolden(t, "rotate-activate."+string(f)+".golden", buf.Bytes())
		})
	}
}

func TestGoldenRotateActivateReissue(t *testing.T) {
	resp := &meshcav1.ActivateAuthorityResponse{
		Authority: fixedRotation().Authorities[2].Authority, Reissued: 42,
		ReissuedBy: ts("2026-03-01T12:05:00Z"),
	}
	resp.Authority.State = "active"
	res := activateResult(resp, goldenNow)
	for _, f := range []format{formatTable, formatJSON} {
		t.Run(string(f), func(t *testing.T) {
			var buf bytes.Buffer
			require.NoError(t, render(&buf, f, res, res.table))
			assertGolden(t, "rotate-activate-reissue."+string(f)+".golden", buf.Bytes())
		})
	}
}

func fixedRotationLog() *meshcav1.GetRotationLogResponse {
	return &meshcav1.GetRotationLogResponse{Events: []*meshcav1.RotationEvent{{
		Seq: 1, At: ts("2026-03-01T11:00:00Z"), Op: "prepare", Created: "c0ffee0123456789",
	}, {
		Seq: 2, At: ts("2026-03-01T11:10:00Z"), Op: "activate", Forced: true,
		Detail: "2 of 5 streams have not acknowledged a bundle containing authority " +
			"c0ffee0123456789",
		Changes: []*meshcav1.AuthorityChange{
			{Id: "c0ffee0123456789", From: "prepared", To: "active"},
			{Id: "a7e5d3c1b9f8e6d4", From: "active", To: "retired"},
		},
	}, {
		Seq: 3, At: ts("2026-03-02T12:00:00Z"), Op: "remove",
		Changes: []*meshcav1.AuthorityChange{
			{Id: "a7e5d3c1b9f8e6d4", From: "retired", To: "removed"},
		},
	}}}
}

func TestGoldenRotateLog(t *testing.T) {
	l := rotationLogFromProto(fixedRotationLog())
	for _, f := range []format{formatTable, formatJSON} {
		t.Run(string(f), func(t *testing.T) {
			var buf bytes.Buffer
			require.NoError(t, render(&buf, f, l, l.table))
			assertGolden(t, "rotate-log."+string(f)+".golden", buf.Bytes())
		})
	}
	empty := rotationLogFromProto(&meshcav1.GetRotationLogResponse{})
	var buf bytes.Buffer
	require.NoError(t, render(&buf, formatTable, empty, empty.table))
	require.Equal(t, "No rotation step has been taken.\n", buf.String())
	buf.Reset()
	require.NoError(t, render(&buf, formatJSON, empty, empty.table))
	require.JSONEq(t, `{"events": []}`, buf.String())
}

func TestRotateFlagErrors(t *testing.T) {
	absent := filepath.Join(t.TempDir(), "absent.sock")
	pemFile := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(pemFile, []byte("x"), 0o600))
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{{
		name:    "a certificate without its key",
		args:    []string{"ca", "rotate", "prepare", "--cert-file", pemFile},
		wantErr: "--cert-file and --key-file go together",
	}, {
		name:    "a bundle without a certificate",
		args:    []string{"ca", "rotate", "prepare", "--bundle-file", pemFile},
		wantErr: "--bundle-file needs --cert-file and --key-file",
	}, {
		name: "intermediate and import together",
		args: []string{"ca", "rotate", "prepare", "--intermediate", "--cert-file", pemFile,
			"--key-file", pemFile},
		wantErr: "--intermediate creates an authority; --cert-file imports one: " +
			"use one or the other",
	}, {
		name:    "an argument",
		args:    []string{"ca", "rotate", "activate", "abc"},
		wantErr: `unknown command "abc" for "meshctl ca rotate activate"`,
	}, {
		name:    "a re-issue window without --reissue",
		args:    []string{"ca", "rotate", "activate", "--reissue-window", "1m"},
		wantErr: "--reissue-window needs --reissue",
	}, {
		name:    "a negative re-issue window",
		args:    []string{"ca", "rotate", "activate", "--reissue", "--reissue-window", "-1m"},
		wantErr: "--reissue-window -1m0s must not be negative",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := execute(t, time.Now(), append([]string{"--admin-socket", absent}, tt.args...)...)
			require.EqualError(t, res.err, tt.wantErr)
		})
	}
}

// TestE2ERotate runs a whole rotation with meshctl against a real server: the safety
// checks refuse with FailedPrecondition and say why, and the bundle follows each step.
func TestE2ERotate(t *testing.T) {
	socket := startServer(t)
	mintDir := filepath.Join(t.TempDir(), "old")
	mustRun(t, socket, "svid", "mint", "--spiffe-id", "spiffe://cluster.local/ns/a/sa/b",
		"--out", mintDir, "--ttl", "1h")
	oldRoot := strings.TrimSpace(mustRun(t, socket, "bundle", "export"))

	out := mustRun(t, socket, "ca", "rotate", "prepare")
	require.Contains(t, out, "is now prepared")
	require.Contains(t, out, "Next: meshctl ca rotate activate --wait 10m")
	require.Len(t, bundleCerts(t, socket), 2)

	var st rotationStatus
	require.NoError(t, json.Unmarshal([]byte(mustRun(t, socket, "ca", "rotate", "status",
		"-o", "json")), &st))
	require.Equal(t, "activate", st.NextStep)
	require.True(t, st.NextStepSafe, "no stream is open, so nothing is waited for")

	// A second prepare is refused while one is prepared.
	res := execute(t, time.Now(), "--admin-socket", socket, "ca", "rotate", "prepare")
	require.Equal(t, codes.FailedPrecondition, status.Code(res.err))
	require.ErrorContains(t, res.err, "is already prepared; activate or retire it first")

	out = mustRun(t, socket, "ca", "rotate", "activate", "--wait", "10s", "--reissue")
	require.Contains(t, out, "is now active")
	require.Contains(t, out, "Re-issuing 0 workload certificates under it, all by ",
		"no SDS stream holds a certificate here")
	require.Contains(t, out, "Next: meshctl ca rotate remove --wait 25h")

	res = execute(t, time.Now(), "--admin-socket", socket, "ca", "rotate", "retire")
	require.Equal(t, codes.FailedPrecondition, status.Code(res.err))
	require.EqualError(t, res.err, "retire refused: no prepared authority to retire "+
		"(activate already retired the authority it replaced)")

	// The minted leaf of the old root still lives: remove is refused until it expires.
	res = execute(t, time.Now(), "--admin-socket", socket, "ca", "rotate", "remove")
	require.Equal(t, codes.FailedPrecondition, status.Code(res.err))
	leaf, err := readPEMCerts(filepath.Join(mintDir, "svid.pem"))
	require.NoError(t, err)
	safe := leaf[0].NotAfter.UTC().Format(time.RFC3339)
	require.ErrorContains(t, res.err, fmt.Sprintf("1 certificate that needs it is valid until %s",
		safe))
	require.Len(t, bundleCerts(t, socket), 2, "a refused remove changes nothing")

	st = rotationStatus{}
	require.NoError(t, json.Unmarshal([]byte(mustRun(t, socket, "ca", "rotate", "status",
		"-o", "json")), &st))
	require.Equal(t, "remove", st.NextStep)
	require.False(t, st.NextStepSafe)
	require.NotNil(t, st.SafeAt)
	require.True(t, st.SafeAt.Equal(leaf[0].NotAfter))

	out = mustRun(t, socket, "ca", "rotate", "remove", "--force")
	require.Contains(t, out, "is now removed")
	require.Contains(t, out, "Warning: forced: 1 certificate that needs authority")

	var log rotationLog
	require.NoError(t, json.Unmarshal([]byte(mustRun(t, socket, "ca", "rotate", "log",
		"-o", "json")), &log))
	var steps []string
	for _, ev := range log.Events {
		steps = append(steps, fmt.Sprintf("%d %s forced=%t", ev.Seq, ev.Step, ev.Forced))
	}
	require.Equal(t, []string{"1 prepare forced=false", "2 activate forced=false",
		"3 remove forced=true"}, steps)
	require.Contains(t, log.Events[2].Detail, "1 certificate that needs it is valid until")
	require.Len(t, bundleCerts(t, socket), 1)
	require.NotEqual(t, oldRoot, strings.TrimSpace(mustRun(t, socket, "bundle", "export")))
}

func bundleCerts(t *testing.T, socket string) []string {
	t.Helper()
	certs, err := parsePEMCerts([]byte(mustRun(t, socket, "bundle", "export")))
	require.NoError(t, err)
	out := make([]string, len(certs))
	for i, c := range certs {
		out[i] = string(c.Raw)
	}
	return out
}

func TestRotateProgressLine(t *testing.T) {
	now := time.Date(2026, 12, 3, 20, 0, 0, 0, time.UTC)
	resp := &meshcav1.GetRotationStatusResponse{
		Authorities: []*meshcav1.AuthorityRotation{
			{Authority: &meshcav1.Authority{State: "active"}, StreamsAcked: 9, StreamsTotal: 9},
			{Authority: &meshcav1.Authority{State: "prepared"}, StreamsAcked: 2, StreamsTotal: 3},
		},
		SafeAt: timestamppb.New(now.Add(90 * time.Second)),
	}
	require.Equal(t, "[####################..........] 2/3 streams acknowledged",
		progressLine("activate", resp, now))
	require.Equal(t, "safe in 1m30s (at 2026-12-03T20:01:30Z)", progressLine("remove", resp, now))
	require.Equal(t, "safe in 0s (at 2026-12-03T20:01:30Z)",
		progressLine("remove", resp, now.Add(time.Hour)))
}
