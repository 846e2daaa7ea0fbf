package xds

import (
	"errors"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/api"
	"github.com/meshca/meshca/ca"
)

func TestClassifyName(t *testing.T) {
	ident := ca.Identity{ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b")}
	for _, tc := range []struct {
		name     string
		secret   string
		wantKind secretKind
		wantErr  error
	}{
		{"default", "default", kindCert, nil},
		{"own SPIFFE ID", "spiffe://cluster.local/ns/a/sa/b", kindCert, nil},
		{"ROOTCA", "ROOTCA", kindBundle, nil},
		{"trust domain bundle", "spiffe://cluster.local", kindBundle, nil},
		{"another identity", "spiffe://cluster.local/ns/a/sa/c", 0, api.ErrPermissionDenied},
		{"another trust domain", "spiffe://example.org", 0, ca.ErrInvalidRequest},
		{"malformed SPIFFE ID", "spiffe://cluster.local/ns//sa", 0, ca.ErrInvalidRequest},
		{"unknown name", "rootca", 0, ca.ErrInvalidRequest},
		{"empty name", "", 0, ca.ErrInvalidRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kind, err := classifyName(tc.secret, ident)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("classifyName(%q) error = %v, want %v", tc.secret, err, tc.wantErr)
			}
			if kind != tc.wantKind {
				t.Fatalf("classifyName(%q) = %d, want %d", tc.secret, kind, tc.wantKind)
			}
		})
	}
}

func TestRenewAtIsAboutHalfTheLifetime(t *testing.T) {
	issued := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	wc := &workloadCert{issued: issued, notAfter: issued.Add(time.Hour)}
	for range 1000 {
		at := renewAt(wc).Sub(issued)
		if at < 24*time.Minute || at > 36*time.Minute {
			t.Fatalf("renewal after %s, want 40%% to 60%% of an hour", at)
		}
	}
}
