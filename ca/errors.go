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
