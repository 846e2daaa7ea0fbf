package main

import (
	"bytes"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testutil"
)

// goldenNow is the clock of every golden rendering that is not about the fixtures.
var goldenNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// ts parses an RFC 3339 time into a protobuf timestamp.
func ts(s string) *timestamppb.Timestamp {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return timestamppb.New(t)
}

func fixedStatus() *meshcav1.GetStatusResponse {
	return &meshcav1.GetStatusResponse{
		TrustDomain: "cluster.local",
		Authorities: []*meshcav1.Authority{{
			Id:                "3f1c0b9a7d2e4c58",
			State:             "retired",
			Subject:           "CN=meshca root cluster.local,O=meshca",
			FingerprintSha256: "3f1c0b9a7d2e4c5800112233445566778899aabbccddeeff0011223344556677",
			NotBefore:         ts("2016-03-01T00:00:00Z"),
			NotAfter:          ts("2026-02-28T00:00:00Z"),
			Root:              true,
		}, {
			Id:                "a7e5d3c1b9f8e6d4",
			State:             "active",
			Subject:           "CN=meshca intermediate,O=example",
			FingerprintSha256: "a7e5d3c1b9f8e6d4c2b0a1928374655647382910aabbccddeeff001122334455",
			NotBefore:         ts("2026-01-01T00:00:00Z"),
			NotAfter:          ts("2026-03-02T18:30:00Z"),
			Root:              false,
		}},
	}
}

func fixedIssuances() *meshcav1.ListIssuancesResponse {
	return &meshcav1.ListIssuancesResponse{Issuances: []*meshcav1.Issuance{{
		Serial:      "5e0d6b2f9a8c7e41d3b2a19087f6e5d4",
		SpiffeId:    "spiffe://cluster.local/ns/shop/sa/orders",
		AuthorityId: "a7e5d3c1b9f8e6d4",
		NotBefore:   ts("2026-03-01T10:59:00Z"),
		NotAfter:    ts("2026-03-01T12:00:00Z"),
		IssuedAt:    ts("2026-03-01T11:00:00Z"),
		Requester:   "admin",
	}, {
		// meshca's own serving certificate carries no SPIFFE ID.
		Serial:      "1b7c3d9e2f4a6b8c0d1e2f3a4b5c6d7",
		AuthorityId: "a7e5d3c1b9f8e6d4",
		NotBefore:   ts("2026-03-01T08:59:00Z"),
		NotAfter:    ts("2026-03-02T09:00:00Z"),
		IssuedAt:    ts("2026-03-01T09:00:00Z"),
		Requester:   "meshca-server",
	}}}
}

func TestGoldenCAStatus(t *testing.T) {
	st := statusFromProto(fixedStatus(), goldenNow)
	for _, f := range []format{formatTable, formatJSON, formatYAML} {
		t.Run(string(f), func(t *testing.T) {
			var buf bytes.Buffer
			require.NoError(t, render(&buf, f, st, st.table))
			assertGolden(t, "ca-status."+string(f)+".golden", buf.Bytes())
		})
	}
}

func TestGoldenCertList(t *testing.T) {
	list := issuancesFromProto(fixedIssuances())
	for _, f := range []format{formatTable, formatJSON} {
		t.Run(string(f), func(t *testing.T) {
			var buf bytes.Buffer
			require.NoError(t, render(&buf, f, list, list.table))
			assertGolden(t, "cert-list."+string(f)+".golden", buf.Bytes())
		})
	}
}

func TestGoldenSVIDMint(t *testing.T) {
	res := mintResult{
		SPIFFEID:   "spiffe://cluster.local/ns/shop/sa/orders",
		Serial:     "5e0d6b2f9a8c7e41d3b2a19087f6e5d4",
		NotAfter:   goldenNow.Add(time.Hour),
		CertFile:   "out/svid.pem",
		KeyFile:    "out/svid.key",
		BundleFile: "out/bundle.pem",
	}
	var buf bytes.Buffer
	require.NoError(t, render(&buf, formatTable, res, res.table(goldenNow)))
	assertGolden(t, "svid-mint.table.golden", buf.Bytes())
}

// The inspect goldens run the real command on the fixtures; with --bundle it needs
// no server.
func TestGoldenCertInspect(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "absent.sock")
	tests := []struct {
		name   string
		args   []string
		golden string
	}{{
		name:   "table with a bundle file",
		args:   []string{"cert", "inspect", fixtureChain, "--bundle", fixtureBundle},
		golden: "cert-inspect.table.golden",
	}, {
		name:   "json with a bundle file",
		args:   []string{"cert", "inspect", fixtureChain, "--bundle", fixtureBundle, "-o", "json"},
		golden: "cert-inspect.json.golden",
	}, {
		name:   "table without any bundle",
		args:   []string{"cert", "inspect", fixtureChain, "--admin-socket", missing},
		golden: "cert-inspect-nobundle.table.golden",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := execute(t, fixtureNow, tt.args...)
			require.NoError(t, res.err)
			assertGolden(t, tt.golden, []byte(res.stdout))
		})
	}
}

func TestInspectVerdict(t *testing.T) {
	chain, err := readPEMCerts(fixtureChain)
	require.NoError(t, err)
	roots, err := readPEMCerts(fixtureBundle)
	require.NoError(t, err)
	otherKey := testutil.MustKey(t, ca.KeyECP256)
	other := testutil.CACert(t, "other root", otherKey, nil, nil, time.Hour)

	tests := []struct {
		name     string
		certs    []*x509.Certificate
		roots    []*x509.Certificate
		now      time.Time
		want     string
		wantID   string
		wantNote string // in the table's SPIFFE ID line
	}{{
		name: "chain verifies to its root", certs: chain, roots: roots, now: fixtureNow,
		want: chainsYes, wantID: fixtureID,
	}, {
		name: "no bundle gives unknown", certs: chain, now: fixtureNow,
		want: chainsUnknown, wantID: fixtureID,
	}, {
		name: "another root refuses the chain", certs: chain, roots: []*x509.Certificate{other},
		now: fixtureNow, want: chainsNo, wantID: fixtureID,
	}, {
		name: "an expired leaf does not verify", certs: chain, roots: roots,
		now: fixtureNow.Add(2 * time.Hour), want: chainsNo, wantID: fixtureID,
	}, {
		name: "without the intermediate the leaf does not verify", certs: chain[:1],
		roots: roots, now: fixtureNow, want: chainsNo, wantID: fixtureID,
	}, {
		name: "a certificate without SPIFFE ID is no SVID", certs: []*x509.Certificate{other},
		roots: []*x509.Certificate{other}, now: time.Now(), want: chainsNo,
		wantNote: "none (",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var src x509bundle.Source // nil: no bundle
			if tt.roots != nil {
				src = pemRoots(tt.roots)
			}
			res := inspect("f.pem", tt.certs, src, "b.pem", tt.now)
			require.Equal(t, tt.want, res.Verification.ChainsToBundle)
			require.Equal(t, tt.want == chainsNo, res.Verification.Error != "")
			require.Equal(t, tt.wantID, res.SPIFFEID)
			var buf bytes.Buffer
			require.NoError(t, res.table(&buf))
			require.Contains(t, buf.String(), "SPIFFE ID:         "+tt.wantNote)
		})
	}
}

func TestTimeLeft(t *testing.T) {
	tests := []struct {
		left time.Duration
		want string
	}{
		{-time.Second, "expired"},
		{0, "expired"},
		{42 * time.Second, "42s"},
		{59*time.Minute + 59*time.Second, "59m"},
		{time.Hour, "1h00m"},
		{47*time.Hour + 5*time.Minute, "47h05m"},
		{48 * time.Hour, "2d"},
		{3650*24*time.Hour + time.Hour, "3650d"},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, timeLeft(tt.left), "time left %s", tt.left)
	}
}

func TestFormatFlag(t *testing.T) {
	var f format
	require.NoError(t, f.Set("JSON"))
	require.Equal(t, formatJSON, f)
	err := f.Set("xml")
	require.EqualError(t, err, "must be one of table, json, yaml")
	require.Equal(t, formatJSON, f, "a refused value changes nothing")
}

// TestCAStatusRemovedHasNoTimeLeft: a removed authority is no longer trusted, so the
// table shows no remaining lifetime for it.
func TestCAStatusRemovedHasNoTimeLeft(t *testing.T) {
	resp := fixedStatus()
	resp.Authorities[0].State = "removed"
	st := statusFromProto(resp, goldenNow)
	var buf bytes.Buffer
	require.NoError(t, render(&buf, formatTable, st, st.table))
	var removed, active string
	for _, line := range strings.Split(buf.String(), "\n") {
		switch {
		case strings.Contains(line, " removed "):
			removed = line
		case strings.Contains(line, " active "):
			active = line
		}
	}
	require.True(t, strings.HasSuffix(removed, "  -"), "%q", removed)
	require.True(t, strings.HasSuffix(active, "  30h30m"), "%q", active)
}
