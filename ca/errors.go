package ca

import "errors"

var (
	// ErrInvalidRequest marks a request the CA refuses because of what it asks for:
	// a bad SPIFFE ID, an unsupported key, a TTL out of range. The API maps it to
	// InvalidArgument.
	ErrInvalidRequest = errors.New("invalid request")
	// ErrNotReady is returned while no authority can sign.
	ErrNotReady = errors.New("certificate authority not ready")
)

// ErrPrecondition marks a rotation step refused because the CA is not in a state
// where it is safe or possible, e.g. activating before every stream acknowledged the
// new bundle, or removing an authority whose certificates are still valid. The API
// maps it to FailedPrecondition; the message says what is missing and when.
var ErrPrecondition = errors.New("precondition failed")
