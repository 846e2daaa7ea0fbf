package server

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/meshca/meshca/api"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/store"
)

// Defaults of the authority watch.
const (
	// DefaultAuthorityExpiryWarning is how long before an authority expires meshca
	// starts warning about it: long enough to rotate by hand, with time to spare for
	// the one-hour wait of activation and the day-long wait of removal, and to plan
	// the import of an operator's CA.
	DefaultAuthorityExpiryWarning = 30 * 24 * time.Hour
	// authorityCheckEvery is how often the authorities are checked.
	authorityCheckEvery = time.Minute
	// authorityWarnEvery is how often the warning about one authority is repeated.
	authorityWarnEvery = 24 * time.Hour
)

// rotationCA is what the authority watch needs of the CA.
type rotationCA interface {
	Authorities() []ca.AuthorityStatus
	PrepareAuthority(ctx context.Context, p ca.PrepareParams) (ca.AuthorityStatus, error)
	Activate(ctx context.Context, p ca.ActivateParams) (ca.AuthorityStatus, error)
}

var _ rotationCA = (*ca.CA)(nil)

// authorityWatch checks the authorities at start and then every checkEvery. It logs
// at Warn each authority still trusted that expires within warnWithin (again every
// warnEvery while it does), and with autoRotate it rotates the active authority by
// itself: it prepares a new root once half of the active one's lifetime has passed,
// and activates it once a sixth remains, only when every stream has acknowledged a
// bundle with it, as `meshctl ca rotate activate` without --force. Removal stays with
// the operator.
type authorityWatch struct {
	ca         rotationCA
	acks       api.BundleAcks
	warnWithin time.Duration // zero: no warnings
	autoRotate bool
	now        func() time.Time
	checkEvery time.Duration
	warnEvery  time.Duration
	log        *slog.Logger

	// warned and waiting are only used by the goroutine that runs the checks: when
	// each authority was last warned about, and what the last automatic activation
	// waited for.
	warned  map[string]time.Time
	waiting string
}

func newAuthorityWatch(c rotationCA, acks api.BundleAcks, warnWithin time.Duration,
	autoRotate bool, now func() time.Time, log *slog.Logger) *authorityWatch {
	if now == nil {
		now = time.Now
	}
	return &authorityWatch{
		ca: c, acks: acks, warnWithin: warnWithin, autoRotate: autoRotate, now: now,
		checkEvery: authorityCheckEvery, warnEvery: authorityWarnEvery, log: log,
		warned: map[string]time.Time{},
	}
}

// Run checks at once and then every checkEvery until ctx ends.
func (w *authorityWatch) Run(ctx context.Context) error {
	if w.autoRotate {
		w.log.Info("Automatic rotation is on: a new root is prepared at half of the " +
			"active authority's lifetime and activated when a sixth remains")
	}
	ticker := time.NewTicker(w.checkEvery)
	defer ticker.Stop()
	for {
		w.check(ctx)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
	}
}

// check runs one round of warnings and, if enabled, automatic rotation.
func (w *authorityWatch) check(ctx context.Context) {
	now := w.now()
	if w.warnWithin > 0 {
		w.warn(now, w.ca.Authorities())
	}
	if w.autoRotate {
		w.rotate(ctx, now, w.ca.Authorities())
	}
}

// warn logs every trusted authority that expires within the window, unless it was
// warned about less than warnEvery ago.
func (w *authorityWatch) warn(now time.Time, all []ca.AuthorityStatus) {
	seen := make(map[string]bool, len(all))
	for _, a := range all {
		left := a.ChainNotAfter.Sub(now)
		if a.State == store.StateRemoved || left > w.warnWithin {
			continue
		}
		seen[a.ID] = true
		if last, ok := w.warned[a.ID]; ok && now.Sub(last) < w.warnEvery {
			continue
		}
		w.warned[a.ID] = now
		msg := "Authority expires soon"
		if left <= 0 {
			msg = "Authority has expired"
		}
		w.log.Warn(msg, "authority_id", a.ID, "state", a.State, "root", a.Root,
			"not_after", a.ChainNotAfter, "time_left", left.Round(time.Second),
			"action", expiryAction[a.State])
	}
	for id := range w.warned {
		if !seen[id] {
			delete(w.warned, id)
		}
	}
}

// expiryAction is what an operator does about an authority that expires soon.
var expiryAction = map[store.AuthorityState]string{
	store.StateActive: "rotate it: meshctl ca rotate prepare, then activate " +
		"(docs/rotation.md); leaves it signs are cut short at its expiry",
	store.StatePrepared: "activate or retire it, and prepare one that lives longer",
	store.StateRetired:  "remove it once no certificate needs it: meshctl ca rotate remove",
}

// rotate takes the next automatic rotation step that is due, if any. A step that
// fails or is not safe yet is logged and tried again at the next check.
func (w *authorityWatch) rotate(ctx context.Context, now time.Time, all []ca.AuthorityStatus) {
	var active, prepared *ca.AuthorityStatus
	for i := range all {
		switch all[i].State {
		case store.StateActive:
			active = &all[i]
		case store.StatePrepared:
			prepared = &all[i]
		}
	}
	if active == nil {
		return
	}
	life := active.ChainNotAfter.Sub(active.NotBefore)
	prepareAt := active.NotBefore.Add(life / 2)
	activateAt := active.ChainNotAfter.Add(-life / 6)

	switch {
	case prepared == nil && !now.Before(prepareAt):
		st, err := w.ca.PrepareAuthority(ctx, ca.PrepareParams{
			Detail: fmt.Sprintf("automatic rotation: half of the lifetime of authority %s "+
				"has passed", active.ID),
		})
		if err != nil {
			w.log.Error("Automatic rotation failed to prepare a new root; will retry",
				"active_authority_id", active.ID, "error", err)
			return
		}
		w.log.Info("Automatic rotation prepared a new root", "authority_id", st.ID,
			"active_authority_id", active.ID, "activate_after", activateAt)
	case prepared != nil && !now.Before(activateAt):
		w.activate(ctx, active, prepared)
	}
}

// activate makes the prepared authority sign once every stream acknowledged a bundle
// with it; until then it logs what it waits for, each time that changes.
func (w *authorityWatch) activate(ctx context.Context, active, prepared *ca.AuthorityStatus) {
	if detail := api.ActivationCheck(w.acks, *prepared); detail != "" {
		if detail != w.waiting {
			w.log.Warn("Automatic rotation waits to activate the prepared authority; "+
				"will retry", "authority_id", prepared.ID, "waiting_for", detail,
				"active_not_after", active.ChainNotAfter)
			w.waiting = detail
		}
		return
	}
	w.waiting = ""
	_, err := w.ca.Activate(ctx, ca.ActivateParams{
		ID: prepared.ID,
		Detail: fmt.Sprintf("automatic rotation: a sixth of the lifetime of authority %s "+
			"remains; every stream acknowledged the bundle", active.ID),
	})
	if err != nil {
		w.log.Error("Automatic rotation failed to activate the prepared authority; "+
			"will retry", "authority_id", prepared.ID, "error", err)
		return
	}
	w.log.Info("Automatic rotation activated the prepared authority",
		"authority_id", prepared.ID, "retired_authority_id", active.ID)
}
