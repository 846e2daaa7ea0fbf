package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/api/policy"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/store"
)

// msgUnauthenticated is the one message every authentication failure gets: the
// reason is logged, never told to a caller that might be probing.
const msgUnauthenticated = "authentication failed"

// ToStatus turns an error from the CA, the store or a stream handler into a gRPC
// status; op names the operation in the log line. It is the one place where meshca
// decides what a caller is told. Client mistakes keep their message, which names
// what is wrong and holds no secret; our own faults are logged with their cause and
// reach the caller as a bare "internal error".
//
// Invalid policies (errors holding [*policy.FieldError]s) are InvalidArgument with
// every problem on its own line; store.ErrConflict, a failed compare-and-swap, is
// Aborted; store.ErrNotFound is NotFound, store.ErrExists AlreadyExists, and
// ca.ErrPrecondition, a rotation step that is not safe yet, FailedPrecondition.
func ToStatus(ctx context.Context, log *slog.Logger, op string, err error) error {
	code, msg := classify(err)
	switch code {
	case codes.Internal:
		log.ErrorContext(ctx, "Request failed", "op", op, "error", err)
	case codes.Unavailable:
		log.WarnContext(ctx, "Request failed", "op", op, "error", err)
	case codes.Unauthenticated, codes.PermissionDenied:
		log.WarnContext(ctx, "Request denied", "op", op, "code", code, "error", err)
	default:
		log.DebugContext(ctx, "Request refused", "op", op, "code", code, "error", err)
	}
	return status.Error(code, msg)
}

func classify(err error) (codes.Code, string) {
	if problems := policy.FieldErrors(err); len(problems) > 0 {
		return codes.InvalidArgument, policyProblems(problems)
	}
	switch {
	case errors.Is(err, ca.ErrInvalidToken):
		return codes.Unauthenticated, msgUnauthenticated
	case errors.Is(err, ca.ErrAuthUnavailable):
		return codes.Unavailable, "token authentication unavailable, retry later"
	case errors.Is(err, ErrPermissionDenied):
		return codes.PermissionDenied, withoutSentinel(err, ErrPermissionDenied)
	case errors.Is(err, ca.ErrInvalidRequest):
		return codes.InvalidArgument, withoutSentinel(err, ca.ErrInvalidRequest)
	case errors.Is(err, store.ErrConflict):
		return codes.Aborted, withoutSentinel(err, store.ErrConflict) +
			": changed concurrently; re-read it and retry"
	case errors.Is(err, store.ErrNotFound):
		return codes.NotFound, err.Error()
	case errors.Is(err, store.ErrExists):
		return codes.AlreadyExists, err.Error()
	case errors.Is(err, ca.ErrPrecondition):
		return codes.FailedPrecondition, withoutSentinel(err, ca.ErrPrecondition)
	case errors.Is(err, ca.ErrNotReady):
		return codes.Unavailable, withoutSentinel(err, ca.ErrNotReady)
	case errors.Is(err, context.Canceled):
		return codes.Canceled, "request canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded, "deadline exceeded"
	default:
		return codes.Internal, "internal error"
	}
}

// policyProblems lists every problem of invalid policies, one per line, so that the
// caller can fix them all in one go.
func policyProblems(problems []*policy.FieldError) string {
	var b strings.Builder
	if len(problems) == 1 {
		b.WriteString("invalid policy (1 problem):")
	} else {
		fmt.Fprintf(&b, "invalid policies (%d problems):", len(problems))
	}
	for _, p := range problems {
		b.WriteString("\n" + p.Error())
	}
	return b.String()
}

// withoutSentinel drops the sentinel's own text from the end of a message: the code
// already says it.
func withoutSentinel(err, sentinel error) string {
	return strings.TrimSuffix(err.Error(), ": "+sentinel.Error())
}
