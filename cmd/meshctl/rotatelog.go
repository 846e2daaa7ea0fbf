package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/api/meshcav1"
)

// rotationLog is the output of `meshctl ca rotate log`.
type rotationLog struct {
	Events []rotationEvent `json:"events"`
}

// rotationEvent is one step of the rotation audit log.
type rotationEvent struct {
	// Seq numbers the steps from 1, in the order they were committed.
	Seq  uint64    `json:"seq"`
	At   time.Time `json:"at"`
	Step string    `json:"step"`
	// Created is the authority the step created, if any.
	Created string            `json:"created,omitempty"`
	Changes []authorityChange `json:"changes,omitempty"`
	// Forced is true when an operator overrode a safety check; Detail says what the
	// check found.
	Forced bool   `json:"forced"`
	Detail string `json:"detail,omitempty"`
}

// authorityChange is one authority moving from one state to another.
type authorityChange struct {
	ID   string `json:"id"`
	From string `json:"from"`
	To   string `json:"to"`
}

func newRotateLog(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "log",
		Short: "Show every rotation step taken, oldest first, with what was forced",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.dialAdmin()
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := call(cmd.Context(), c, c.api.GetRotationLog,
				&meshcav1.GetRotationLogRequest{})
			if err != nil {
				return fmt.Errorf("failed to get the rotation log: %w", err)
			}
			l := rotationLogFromProto(resp)
			return render(cmd.OutOrStdout(), g.output, l, l.table)
		},
	}
}

func rotationLogFromProto(resp *meshcav1.GetRotationLogResponse) rotationLog {
	l := rotationLog{Events: []rotationEvent{}}
	for _, ev := range resp.GetEvents() {
		re := rotationEvent{
			Seq: ev.GetSeq(), At: ev.GetAt().AsTime(), Step: ev.GetOp(),
			Created: ev.GetCreated(), Forced: ev.GetForced(), Detail: ev.GetDetail(),
		}
		for _, ch := range ev.GetChanges() {
			re.Changes = append(re.Changes, authorityChange{
				ID: ch.GetId(), From: ch.GetFrom(), To: ch.GetTo(),
			})
		}
		l.Events = append(l.Events, re)
	}
	return l
}

func (l rotationLog) table(w io.Writer) error {
	if len(l.Events) == 0 {
		_, err := fmt.Fprintln(w, "No rotation step has been taken.")
		return err
	}
	tw := newTable(w)
	row(tw, "SEQ", "TIME", "STEP", "AUTHORITIES", "FORCED", "DETAIL")
	for _, ev := range l.Events {
		forced := "no"
		if ev.Forced {
			forced = "yes"
		}
		row(tw, fmt.Sprint(ev.Seq), timestamp(ev.At), ev.Step, ev.authorities(), forced,
			orDash(ev.Detail))
	}
	return tw.Flush()
}

// authorities says what the step did to which authority, e.g. "c0ffee01 created" or
// "c0ffee01 prepared->active, 3f1c0b9a active->retired".
func (ev rotationEvent) authorities() string {
	var parts []string
	if ev.Created != "" {
		parts = append(parts, ev.Created+" created")
	}
	for _, ch := range ev.Changes {
		parts = append(parts, fmt.Sprintf("%s %s->%s", ch.ID, ch.From, ch.To))
	}
	return orDash(strings.Join(parts, ", "))
}
