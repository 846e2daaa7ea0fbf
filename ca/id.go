package ca

import (
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ParseSPIFFEID parses a SPIFFE ID from text with go-spiffe's strict rules: no
// percent-encoding, no empty or dot segments, no trailing slash, a lowercase trust
// domain. Errors wrap ErrInvalidRequest.
func ParseSPIFFEID(s string) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("invalid SPIFFE ID %q: %w: %w", s, err, ErrInvalidRequest)
	}
	return id, nil
}
