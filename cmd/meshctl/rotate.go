package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshca/meshca/api"
	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/ca"
)

// pollInterval is how often --wait asks the server whether a step is safe yet.
const pollInterval = time.Second

// rotateResult is the output of one rotation step.
type rotateResult struct {
	Step      string          `json:"step"`
	Authority authorityStatus `json:"authority"`
	// Warning says what a forced step skipped.
	Warning string `json:"warning,omitempty"`
	// Next is the step that follows, as a command.
	Next string `json:"next,omitempty"`
	// Reissued counts the workload certificates that activate --reissue moves to the
	// new authority, all of them by ReissuedBy.
	Reissued   *int       `json:"reissued,omitempty"`
	ReissuedBy *time.Time `json:"reissued_by,omitempty"`
}

// rotationStatus is the output of `meshctl ca rotate status`.
type rotationStatus struct {
	Authorities []rotationAuthority `json:"authorities"`
	// NextStep is "prepare", "activate" or "remove".
	NextStep     string `json:"next_step"`
	NextStepSafe bool   `json:"next_step_safe"`
	// WaitingFor says what the next step waits for; empty when it is safe.
	WaitingFor string     `json:"waiting_for,omitempty"`
	SafeAt     *time.Time `json:"safe_at,omitempty"`
}

// rotationAuthority is an authority with what its next step depends on.
type rotationAuthority struct {
	authorityStatus
	// StreamsAcked of StreamsTotal subscribed streams have a prepared authority's
	// roots.
	StreamsAcked *int `json:"streams_acked,omitempty"`
	StreamsTotal *int `json:"streams_total,omitempty"`
	// LiveLeaves counts still-valid certificates that need a retired authority.
	LiveLeaves     *int       `json:"live_leaves,omitempty"`
	SafeToRemoveAt *time.Time `json:"safe_to_remove_at,omitempty"`
}

func newRotateCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Rotate the root or intermediate authority without downtime",
		Long: "A rotation is prepare, activate, remove. prepare adds the next authority to\n" +
			"every bundle; activate makes it sign once every stream has that bundle, and\n" +
			"retires the old one; remove drops the old one once no valid certificate needs\n" +
			"it. retire withdraws a prepared authority instead of activating it.\n" +
			"See docs/rotation.md.",
	}
	cmd.AddCommand(newRotatePrepare(g), newRotateActivate(g), newRotateRetire(g),
		newRotateRemove(g), newRotateStatus(g), newRotateLog(g))
	return cmd
}

func newRotatePrepare(g *globals) *cobra.Command {
	var intermediate bool
	var certFile, keyFile, bundleFile string
	cmd := &cobra.Command{
		Use:   "prepare",
		Short: "Create (or import) the next authority: trusted by everyone, not signing yet",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &meshcav1.PrepareAuthorityRequest{Intermediate: intermediate}
			if (certFile == "") != (keyFile == "") {
				return errors.New("--cert-file and --key-file go together")
			}
			if bundleFile != "" && certFile == "" {
				return errors.New("--bundle-file needs --cert-file and --key-file")
			}
			if certFile != "" && intermediate {
				return errors.New("--intermediate creates an authority; --cert-file imports " +
					"one: use one or the other")
			}
			for _, f := range []struct {
				path string
				dst  *[]byte
			}{{certFile, &req.CertPem}, {keyFile, &req.KeyPem}, {bundleFile, &req.BundlePem}} {
				if f.path == "" {
					continue
				}
				data, err := os.ReadFile(f.path)
				if err != nil {
					return err
				}
				*f.dst = data
			}
			return runStep(cmd, g, "prepare", func(ctx context.Context, c *adminClient) (
				*meshcav1.Authority, string, error) {
				resp, err := call(ctx, c, c.api.PrepareAuthority, req)
				return resp.GetAuthority(), "", err
			})
		},
	}
	f := cmd.Flags()
	f.BoolVar(&intermediate, "intermediate", false,
		"create an intermediate signed by the active root instead of a new root")
	f.StringVar(&certFile, "cert-file", "", "import this CA certificate (PEM, then its issuers)")
	f.StringVar(&keyFile, "key-file", "", "private key of --cert-file (PEM)")
	f.StringVar(&bundleFile, "bundle-file", "",
		"roots that --cert-file chains to (PEM), when it does not end with its root")
	return cmd
}

func newRotateActivate(g *globals) *cobra.Command {
	var id string
	var force, reissue bool
	var wait, window time.Duration
	cmd := &cobra.Command{
		Use:   "activate",
		Short: "Make the prepared authority sign, once every stream has its bundle",
		Long: "activate makes the prepared authority sign and retires the one that signed.\n" +
			"It is refused while some open SDS or ADS stream has not acknowledged a bundle\n" +
			"containing the new root. --wait waits for them; --force skips the check, and\n" +
			"workloads without the new bundle then reject certificates it signs.\n" +
			"Workload certificates move to the new authority at their normal renewal;\n" +
			"--reissue re-issues those meshca delivers over SDS and ADS now, each at a\n" +
			"random time within --reissue-window.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if window < 0 {
				return fmt.Errorf("--reissue-window %s must not be negative", window)
			}
			if cmd.Flags().Changed("reissue-window") && !reissue {
				return errors.New("--reissue-window needs --reissue")
			}
			req := &meshcav1.ActivateAuthorityRequest{Id: id, Force: force, Reissue: reissue}
			if reissue {
				req.ReissueWindow = durationpb.New(window)
			}
			c, err := g.dialAdmin()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx := cmd.Context()
			if err := waitSafe(ctx, cmd.ErrOrStderr(), c, "activate", wait); err != nil {
				return fmt.Errorf("activate refused: %w", err)
			}
			resp, err := call(ctx, c, c.api.ActivateAuthority, req)
			if err != nil {
				return fmt.Errorf("activate refused: %w", err)
			}
			res := activateResult(resp, g.now())
			return render(cmd.OutOrStdout(), g.output, res, res.table)
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "the prepared authority (default: the only one)")
	cmd.Flags().BoolVar(&force, "force", false,
		"activate even if some streams lack the new bundle (their handshakes may fail)")
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the step to be safe")
	cmd.Flags().BoolVar(&reissue, "reissue", false,
		"re-issue every SDS/ADS workload certificate under the new authority now")
	cmd.Flags().DurationVar(&window, "reissue-window", api.DefaultReissueWindow,
		"spread the re-issue over this long (0: all at once)")
	return cmd
}

// activateResult is the output of activate, with what --reissue scheduled.
func activateResult(resp *meshcav1.ActivateAuthorityResponse, now time.Time) rotateResult {
	res := rotateResult{Step: "activate", Authority: authorityFromProto(resp.GetAuthority(), now),
		Warning: resp.GetWarning(), Next: nextCommand["activate"]}
	if resp.GetReissuedBy() != nil {
		n, by := int(resp.GetReissued()), resp.GetReissuedBy().AsTime()
		res.Reissued, res.ReissuedBy = &n, &by
	}
	return res
}

func newRotateRetire(g *globals) *cobra.Command {
	var id string
	cmd := &cobra.Command{
		Use:   "retire",
		Short: "Withdraw the prepared authority instead of activating it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runStep(cmd, g, "retire", func(ctx context.Context, c *adminClient) (
				*meshcav1.Authority, string, error) {
				resp, err := call(ctx, c, c.api.RetireAuthority,
					&meshcav1.RetireAuthorityRequest{Id: id})
				return resp.GetAuthority(), "", err
			})
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "the prepared authority (default: the only one)")
	return cmd
}

func newRotateRemove(g *globals) *cobra.Command {
	var id string
	var force bool
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "remove",
		Short: "Stop trusting the retired authority once nothing needs it",
		Long: "remove drops the retired authority from every bundle and erases its key. It is\n" +
			"refused while certificates that need it are still valid, and says until when.\n" +
			"--wait waits until then; --force removes it at once (for a compromised key),\n" +
			"and workloads holding such certificates fail their handshakes.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runStep(cmd, g, "remove", func(ctx context.Context, c *adminClient) (
				*meshcav1.Authority, string, error) {
				if err := waitSafe(ctx, cmd.ErrOrStderr(), c, "remove", wait); err != nil {
					return nil, "", err
				}
				resp, err := call(ctx, c, c.api.RemoveAuthority,
					&meshcav1.RemoveAuthorityRequest{Id: id, Force: force})
				return resp.GetAuthority(), resp.GetWarning(), err
			})
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "the retired authority (default: the only one)")
	cmd.Flags().BoolVar(&force, "force", false,
		"remove even if valid certificates still need it (their holders' handshakes fail)")
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the step to be safe")
	return cmd
}

func newRotateStatus(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show where the rotation stands and whether its next step is safe",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.dialAdmin()
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := call(cmd.Context(), c, c.api.GetRotationStatus,
				&meshcav1.GetRotationStatusRequest{})
			if err != nil {
				return fmt.Errorf("failed to get rotation status: %w", err)
			}
			st := rotationFromProto(resp, g.now())
			return render(cmd.OutOrStdout(), g.output, st, st.table(g.now()))
		},
	}
}

// runStep dials the admin socket, runs one step and renders its result.
func runStep(cmd *cobra.Command, g *globals, step string,
	do func(context.Context, *adminClient) (*meshcav1.Authority, string, error)) error {
	c, err := g.dialAdmin()
	if err != nil {
		return err
	}
	defer c.Close()
	a, warning, err := do(cmd.Context(), c)
	if err != nil {
		return fmt.Errorf("%s refused: %w", step, err)
	}
	next := nextCommand[step]
	if step == "retire" {
		// Another authority may still be retired from an earlier rotation.
		next += " --id " + a.GetId()
	}
	res := rotateResult{Step: step, Authority: authorityFromProto(a, g.now()),
		Warning: warning, Next: next}
	return render(cmd.OutOrStdout(), g.output, res, res.table)
}

// nextCommand is what an operator runs after each step.
var nextCommand = map[string]string{
	"prepare":  "meshctl ca rotate activate --wait 10m",
	"activate": "meshctl ca rotate remove --wait 25h",
	"retire":   "meshctl ca rotate remove",
}

// waitSafe polls the rotation status until step is the next step and safe, for at
// most wait; zero wait returns at once and lets the server decide. It prints what it
// waits for on w each time that changes.
func waitSafe(ctx context.Context, w io.Writer, c *adminClient, step string,
	wait time.Duration) error {
	if wait <= 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var last string
	// On a terminal a progress line is redrawn at every poll.
	tty := isTerminal(w)
	if tty {
		defer fmt.Fprintln(w)
	}
	for {
		resp, err := call(ctx, c, c.api.GetRotationStatus, &meshcav1.GetRotationStatusRequest{})
		if err != nil {
			return err
		}
		if resp.GetNextStep() != step || resp.GetNextStepSafe() {
			return nil // the server refuses a step that is not next, with the reason
		}
		if msg := resp.GetWaitingFor(); msg != last {
			if tty {
				fmt.Fprintln(w) // end the progress line
			}
			fmt.Fprintf(w, "Waiting for %s\n", msg)
			last = msg
		}
		if tty {
			fmt.Fprintf(w, "\r%s\x1b[K", progressLine(step, resp, time.Now()))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("still waiting for %s after %s", last, wait)
		case <-time.After(pollInterval):
		}
	}
}

func authorityFromProto(a *meshcav1.Authority, now time.Time) authorityStatus {
	kind := "intermediate"
	if a.GetRoot() {
		kind = "root"
	}
	notAfter := a.GetNotAfter().AsTime()
	return authorityStatus{
		ID:                a.GetId(),
		State:             a.GetState(),
		Kind:              kind,
		Subject:           a.GetSubject(),
		FingerprintSHA256: a.GetFingerprintSha256(),
		NotBefore:         a.GetNotBefore().AsTime(),
		NotAfter:          notAfter,
		TimeLeftSeconds:   int64(notAfter.Sub(now) / time.Second),
	}
}

func (r rotateResult) table(w io.Writer) error {
	a := r.Authority
	fmt.Fprintf(w, "%s: authority %s (%s) is now %s\n", r.Step, a.ID, a.Kind, a.State)
	fmt.Fprintf(w, "Fingerprint (SHA-256): %s\n", a.FingerprintSHA256)
	fmt.Fprintf(w, "Not after: %s\n", timestamp(a.NotAfter))
	if r.Warning != "" {
		fmt.Fprintf(w, "Warning: %s\n", r.Warning)
	}
	if r.Reissued != nil {
		fmt.Fprintf(w, "Re-issuing %d workload certificates under it, all by %s\n",
			*r.Reissued, timestamp(*r.ReissuedBy))
	}
	if r.Next != "" {
		fmt.Fprintf(w, "Next: %s\n", r.Next)
	}
	return nil
}

func rotationFromProto(resp *meshcav1.GetRotationStatusResponse, now time.Time) rotationStatus {
	st := rotationStatus{
		Authorities:  []rotationAuthority{},
		NextStep:     resp.GetNextStep(),
		NextStepSafe: resp.GetNextStepSafe(),
		WaitingFor:   resp.GetWaitingFor(),
	}
	if resp.GetSafeAt() != nil {
		t := resp.GetSafeAt().AsTime()
		st.SafeAt = &t
	}
	for _, r := range resp.GetAuthorities() {
		ra := rotationAuthority{authorityStatus: authorityFromProto(r.GetAuthority(), now)}
		switch ra.State {
		case "prepared":
			acked, total := int(r.GetStreamsAcked()), int(r.GetStreamsTotal())
			ra.StreamsAcked, ra.StreamsTotal = &acked, &total
		case "retired":
			live := int(r.GetLiveLeaves())
			ra.LiveLeaves = &live
			if r.GetSafeToRemoveAt() != nil {
				t := r.GetSafeToRemoveAt().AsTime()
				ra.SafeToRemoveAt = &t
			}
		}
		st.Authorities = append(st.Authorities, ra)
	}
	return st
}

func (st rotationStatus) table(now time.Time) func(io.Writer) error {
	return func(w io.Writer) error {
		tw := newTable(w)
		row(tw, "ID", "STATE", "KIND", "NOT AFTER", "PROGRESS")
		for _, a := range st.Authorities {
			row(tw, a.ID, a.State, a.Kind, timestamp(a.NotAfter), a.progress(now))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(w)
		switch {
		case st.NextStepSafe:
			fmt.Fprintf(w, "Next step: %s (safe now)\n", st.NextStep)
		case st.SafeAt != nil:
			fmt.Fprintf(w, "Next step: %s, waiting for %s, safe at %s\n", st.NextStep,
				st.WaitingFor, expiry(*st.SafeAt, now))
		default:
			fmt.Fprintf(w, "Next step: %s, waiting for %s\n", st.NextStep, st.WaitingFor)
		}
		return nil
	}
}

// progress says what an authority's next step depends on.
func (a rotationAuthority) progress(now time.Time) string {
	switch {
	case a.State == "active":
		return "signing"
	case a.StreamsTotal != nil:
		return fmt.Sprintf("%d of %d streams have its bundle", *a.StreamsAcked, *a.StreamsTotal)
	case a.LiveLeaves != nil && *a.LiveLeaves == 0:
		return "no valid certificate needs it"
	case a.LiveLeaves != nil && a.SafeToRemoveAt != nil:
		return ca.Certificates(int(*a.LiveLeaves), "needs it", "need it") + ", until " +
			expiry(*a.SafeToRemoveAt, now)
	default:
		return "-"
	}
}

// isTerminal says whether w is a character device, such as an operator's terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progressLine shows how far a step is from being safe: for activate, the share of
// streams that acknowledged the prepared authority's bundle; for remove, the time
// left until the last old leaf expires.
func progressLine(step string, resp *meshcav1.GetRotationStatusResponse, now time.Time) string {
	switch step {
	case "activate":
		for _, a := range resp.GetAuthorities() {
			if a.GetAuthority().GetState() != "prepared" {
				continue
			}
			acked, total := int(a.GetStreamsAcked()), int(a.GetStreamsTotal())
			const width = 30
			done := width
			if total > 0 {
				done = width * acked / total
			}
			return fmt.Sprintf("[%s%s] %d/%d streams acknowledged",
				strings.Repeat("#", done), strings.Repeat(".", width-done), acked, total)
		}
	case "remove":
		if at := resp.GetSafeAt(); at != nil {
			left := max(at.AsTime().Sub(now), 0).Round(time.Second)
			return fmt.Sprintf("safe in %s (at %s)", left,
				at.AsTime().UTC().Format(time.RFC3339))
		}
	}
	return "waiting"
}
