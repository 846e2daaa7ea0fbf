package main

import (
	"fmt"
	"io"
	"math"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/api/meshcav1"
)

// issuanceList is the output of `meshctl cert list`, newest first.
type issuanceList struct {
	Issuances []issuance `json:"issuances"`
}

// issuance is one audit record of a certificate meshca signed.
type issuance struct {
	// Serial is the serial number in lowercase hex.
	Serial string `json:"serial"`
	// SPIFFEID is empty for meshca's own serving certificates.
	SPIFFEID    string    `json:"spiffe_id"`
	AuthorityID string    `json:"authority_id"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	IssuedAt    time.Time `json:"issued_at"`
	// Requester is "admin" or the Kubernetes identity of the caller.
	Requester string `json:"requester"`
}

func newCertCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cert",
		Short: "Inspect certificates and the issuance audit log",
	}
	cmd.AddCommand(newCertInspectCommand(g), newCertListCommand(g))
	return cmd
}

func newCertListCommand(g *globals) *cobra.Command {
	var spiffeID string
	var limit int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List issued certificates from the audit log, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 || limit > math.MaxInt32 {
				return fmt.Errorf("--limit %d is out of range (0 to %d)", limit, math.MaxInt32)
			}
			c, err := g.dialAdmin()
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := call(cmd.Context(), c, c.api.ListIssuances,
				&meshcav1.ListIssuancesRequest{SpiffeId: spiffeID, Limit: int32(limit)})
			if err != nil {
				return fmt.Errorf("failed to list issuances: %w", err)
			}
			list := issuancesFromProto(resp)
			return render(cmd.OutOrStdout(), g.output, list, list.table)
		},
	}
	cmd.Flags().StringVar(&spiffeID, "spiffe-id", "", "only certificates for this SPIFFE ID")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many (default: the server's, 100)")
	return cmd
}

func issuancesFromProto(resp *meshcav1.ListIssuancesResponse) issuanceList {
	list := issuanceList{Issuances: []issuance{}}
	for _, r := range resp.GetIssuances() {
		list.Issuances = append(list.Issuances, issuance{
			Serial:      r.GetSerial(),
			SPIFFEID:    r.GetSpiffeId(),
			AuthorityID: r.GetAuthorityId(),
			NotBefore:   r.GetNotBefore().AsTime(),
			NotAfter:    r.GetNotAfter().AsTime(),
			IssuedAt:    r.GetIssuedAt().AsTime(),
			Requester:   r.GetRequester(),
		})
	}
	return list
}

func (l issuanceList) table(w io.Writer) error {
	tw := newTable(w)
	row(tw, "SERIAL", "SPIFFE ID", "NOT AFTER", "REQUESTER")
	for _, r := range l.Issuances {
		row(tw, r.Serial, orDash(r.SPIFFEID), timestamp(r.NotAfter), orDash(r.Requester))
	}
	return tw.Flush()
}
