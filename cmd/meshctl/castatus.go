package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/api/meshcav1"
)

// caStatus is the output of `meshctl ca status`.
type caStatus struct {
	TrustDomain string            `json:"trust_domain"`
	Authorities []authorityStatus `json:"authorities"`
}

// authorityStatus describes one signing authority.
type authorityStatus struct {
	ID    string `json:"id"`
	State string `json:"state"`
	// Kind is "root" for a self-signed authority, "intermediate" otherwise.
	Kind    string `json:"kind"`
	Subject string `json:"subject"`
	// FingerprintSHA256 is the SHA-256 of the DER certificate, lowercase hex.
	FingerprintSHA256 string    `json:"fingerprint_sha256"`
	NotBefore         time.Time `json:"not_before"`
	NotAfter          time.Time `json:"not_after"`
	// TimeLeftSeconds is the time until NotAfter; negative once expired.
	TimeLeftSeconds int64 `json:"time_left_seconds"`
}

func newCACommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Inspect and rotate the certificate authority",
	}
	cmd.AddCommand(newRotateCommand(g))
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Show the trust domain and every authority with its expiry",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.dialAdmin()
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := call(cmd.Context(), c, c.api.GetStatus, &meshcav1.GetStatusRequest{})
			if err != nil {
				return fmt.Errorf("failed to get CA status: %w", err)
			}
			st := statusFromProto(resp, g.now())
			return render(cmd.OutOrStdout(), g.output, st, st.table)
		},
	})
	return cmd
}

// statusFromProto converts the API's answer into our output struct, computing the
// time left from now.
func statusFromProto(resp *meshcav1.GetStatusResponse, now time.Time) caStatus {
	st := caStatus{TrustDomain: resp.GetTrustDomain(), Authorities: []authorityStatus{}}
	for _, a := range resp.GetAuthorities() {
		kind := "intermediate"
		if a.GetRoot() {
			kind = "root"
		}
		notAfter := a.GetNotAfter().AsTime()
		st.Authorities = append(st.Authorities, authorityStatus{
			ID:                a.GetId(),
			State:             a.GetState(),
			Kind:              kind,
			Subject:           a.GetSubject(),
			FingerprintSHA256: a.GetFingerprintSha256(),
			NotBefore:         a.GetNotBefore().AsTime(),
			NotAfter:          notAfter,
			TimeLeftSeconds:   int64(notAfter.Sub(now) / time.Second),
		})
	}
	return st
}

func (st caStatus) table(w io.Writer) error {
	fmt.Fprintf(w, "Trust domain: %s\n\n", st.TrustDomain)
	tw := newTable(w)
	row(tw, "ID", "STATE", "KIND", "FINGERPRINT (SHA-256)", "NOT AFTER", "TIME LEFT")
	for _, a := range st.Authorities {
		left := timeLeft(time.Duration(a.TimeLeftSeconds) * time.Second)
		if a.State == "removed" {
			left = "-" // no longer trusted: its lifetime no longer matters
		}
		row(tw, a.ID, a.State, a.Kind, a.FingerprintSHA256, timestamp(a.NotAfter), left)
	}
	return tw.Flush()
}
