package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	yamlv3 "go.yaml.in/yaml/v3"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/api/policy"
)

// policyRevision is one revision of a policy: the output of `policy get`, and an
// entry of `policy list` and `policy history`.
type policyRevision struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Revision  int64  `json:"revision"`
	// Deleted marks the revision that deleted the policy; it has no Policy.
	Deleted   bool      `json:"deleted,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
	Author    string    `json:"author"`
	// Policy is the document, as `policy apply` takes it.
	Policy *policy.Policy `json:"policy,omitempty"`
}

// policyList is the output of `policy list`, by namespace and name.
type policyList struct {
	Policies []policyRevision `json:"policies"`
}

// policyHistory is the output of `policy history`, oldest revision first.
type policyHistory struct {
	Revisions []policyRevision `json:"revisions"`
}

// policyChange is what a change did, or in `policy diff` would do, to one policy.
type policyChange struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Action is created, updated, unchanged or deleted.
	Action string `json:"action"`
	// OldRevision is 0 for a policy that did not exist, NewRevision 0 in a diff.
	OldRevision int64 `json:"old_revision,omitempty"`
	NewRevision int64 `json:"new_revision,omitempty"`
	// Old and New are the documents before and after, in `policy diff` only.
	Old *policy.Policy `json:"old,omitempty"`
	New *policy.Policy `json:"new,omitempty"`
}

// policyChanges is the output of `policy apply`, `delete`, `rollback` and `diff`.
type policyChanges struct {
	Changes []policyChange `json:"changes"`
}

// decodeDocument decodes a policy document sent by the server; nil for none.
func decodeDocument(doc string) (*policy.Policy, error) {
	if doc == "" {
		return nil, nil
	}
	var p policy.Policy
	if err := json.Unmarshal([]byte(doc), &p); err != nil {
		return nil, fmt.Errorf("server sent an unreadable policy document: %w", err)
	}
	return &p, nil
}

func revisionFromProto(p *meshcav1.Policy) (policyRevision, error) {
	doc, err := decodeDocument(p.GetDocument())
	if err != nil {
		return policyRevision{}, err
	}
	return policyRevision{
		Namespace: p.GetNamespace(),
		Name:      p.GetName(),
		Revision:  p.GetRevision(),
		Deleted:   p.GetDeleted(),
		UpdatedAt: p.GetUpdatedAt().AsTime(),
		Author:    p.GetAuthor(),
		Policy:    doc,
	}, nil
}

func revisionsFromProto(ps []*meshcav1.Policy) ([]policyRevision, error) {
	out := make([]policyRevision, 0, len(ps))
	for _, p := range ps {
		rev, err := revisionFromProto(p)
		if err != nil {
			return nil, err
		}
		out = append(out, rev)
	}
	return out, nil
}

func listFromProto(resp *meshcav1.ListPoliciesResponse) (policyList, error) {
	revs, err := revisionsFromProto(resp.GetPolicies())
	return policyList{Policies: revs}, err
}

func historyFromProto(resp *meshcav1.PolicyHistoryResponse) (policyHistory, error) {
	revs, err := revisionsFromProto(resp.GetRevisions())
	return policyHistory{Revisions: revs}, err
}

// changesFromProto converts the server's changes; withDocuments keeps the documents,
// which only a diff shows.
func changesFromProto(cs []*meshcav1.PolicyChange, withDocuments bool) (policyChanges,
	error) {
	out := policyChanges{Changes: make([]policyChange, 0, len(cs))}
	for _, c := range cs {
		pc := policyChange{
			Namespace: c.GetNamespace(), Name: c.GetName(), Action: c.GetAction(),
			OldRevision: c.GetOldRevision(), NewRevision: c.GetNewRevision(),
		}
		if withDocuments {
			var err error
			if pc.Old, err = decodeDocument(c.GetOldDocument()); err != nil {
				return policyChanges{}, err
			}
			if pc.New, err = decodeDocument(c.GetNewDocument()); err != nil {
				return policyChanges{}, err
			}
		}
		out.Changes = append(out.Changes, pc)
	}
	return out, nil
}

// renderChange renders the single change of `policy delete` and `policy rollback`.
func renderChange(w io.Writer, f format, c *meshcav1.PolicyChange) error {
	out, err := changesFromProto([]*meshcav1.PolicyChange{c}, false)
	if err != nil {
		return err
	}
	return render(w, f, out, out.table)
}

func (r policyRevision) table(w io.Writer) error {
	tw := newTable(w)
	row(tw, "Policy:", r.Namespace+"/"+r.Name)
	row(tw, "Revision:", strconv.FormatInt(r.Revision, 10))
	row(tw, "Updated:", timestamp(r.UpdatedAt)+" by "+orDash(r.Author))
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.Policy == nil {
		return nil
	}
	doc, err := documentYAML(r.Policy)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "\n%s", doc)
	return err
}

func (l policyList) table(w io.Writer) error {
	tw := newTable(w)
	row(tw, "NAMESPACE", "NAME", "ACTION", "SELECTOR", "RULES", "REVISION", "UPDATED")
	for _, r := range l.Policies {
		action, selector, rules := "-", "-", "-"
		if p := r.Policy; p != nil {
			action, rules = string(p.Spec.Action), strconv.Itoa(len(p.Spec.Rules))
			selector = "*"
			if sa := p.Spec.SelectedServiceAccount(); sa != "" {
				selector = "serviceAccount=" + sa
			}
		}
		row(tw, r.Namespace, r.Name, action, selector, rules,
			strconv.FormatInt(r.Revision, 10), timestamp(r.UpdatedAt))
	}
	return tw.Flush()
}

func (h policyHistory) table(w io.Writer) error {
	tw := newTable(w)
	row(tw, "REVISION", "CHANGE", "UPDATED", "AUTHOR")
	live := false
	for _, r := range h.Revisions {
		change := "updated"
		switch {
		case r.Deleted:
			change = "deleted"
		case !live:
			change = "created"
		}
		live = !r.Deleted
		row(tw, strconv.FormatInt(r.Revision, 10), change, timestamp(r.UpdatedAt),
			orDash(r.Author))
	}
	return tw.Flush()
}

func (cs policyChanges) table(w io.Writer) error {
	tw := newTable(w)
	row(tw, "POLICY", "ACTION", "REVISION")
	for _, c := range cs.Changes {
		rev := strconv.FormatInt(c.NewRevision, 10)
		if c.Action == "updated" || c.Action == "deleted" {
			rev = fmt.Sprintf("%d -> %d", c.OldRevision, c.NewRevision)
		}
		row(tw, c.Namespace+"/"+c.Name, c.Action, rev)
	}
	return tw.Flush()
}

// diff writes a unified diff of the YAML of every policy that would change, or
// "no changes".
func (cs policyChanges) diff(w io.Writer) error {
	changed := 0
	for _, c := range cs.Changes {
		if c.Action == "unchanged" {
			continue
		}
		changed++
		old, err := yamlLines(c.Old)
		if err != nil {
			return err
		}
		upd, err := yamlLines(c.New)
		if err != nil {
			return err
		}
		key := c.Namespace + "/" + c.Name
		from := fmt.Sprintf("%s (revision %d)", key, c.OldRevision)
		if c.Old == nil {
			from = key + " (none)"
		}
		to := key + " (applied)"
		if c.New == nil {
			to = key + " (deleted)"
		}
		if _, err := fmt.Fprintf(w, "--- %s\n+++ %s\n", from, to); err != nil {
			return err
		}
		for _, line := range unifiedDiff(old, upd, 3) {
			if _, err := fmt.Fprintln(w, line); err != nil {
				return err
			}
		}
	}
	if changed == 0 {
		_, err := fmt.Fprintln(w, "no changes")
		return err
	}
	return nil
}

// yamlLines renders a policy as YAML lines; none for nil.
func yamlLines(p *policy.Policy) ([]string, error) {
	if p == nil {
		return nil, nil
	}
	doc, err := documentYAML(p)
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimSuffix(string(doc), "\n"), "\n"), nil
}

// documentYAML renders a policy as YAML with its fields in the order of the schema,
// as operators write it (apiVersion, kind, metadata, spec; selector, action, rules),
// where sigs.k8s.io/yaml would sort them.
func documentYAML(p *policy.Policy) ([]byte, error) {
	j, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("failed to encode policy: %w", err)
	}
	// JSON is YAML: the node tree keeps the order of the keys.
	var doc yamlv3.Node
	if err := yamlv3.Unmarshal(j, &doc); err != nil {
		return nil, fmt.Errorf("failed to encode YAML: %w", err)
	}
	resetStyle(&doc)
	var buf bytes.Buffer
	enc := yamlv3.NewEncoder(&buf)
	enc.SetIndent(2)
	enc.CompactSeqIndent()
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("failed to encode YAML: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("failed to encode YAML: %w", err)
	}
	return buf.Bytes(), nil
}

// resetStyle drops the JSON flow style and quotes, so the encoder writes block YAML
// and quotes only the strings that need it.
func resetStyle(n *yamlv3.Node) {
	n.Style = 0
	for _, c := range n.Content {
		resetStyle(c)
	}
}

// validation is the output of `policy validate`.
type validation struct {
	// Files is how many files (or stdin) were read.
	Files    int                 `json:"files"`
	Problems []validationProblem `json:"problems"`
}

// validationProblem is one problem. A file that cannot be read has only Message.
type validationProblem struct {
	File     string `json:"file,omitempty"`
	Line     int    `json:"line,omitempty"`
	Document int    `json:"document,omitempty"`
	// Policy is NAMESPACE/NAME, once the document got that far.
	Policy string `json:"policy,omitempty"`
	// Field is the path of the field, as in spec.rules[0].to[0].methods[1].
	Field string `json:"field,omitempty"`
	// Kind is the kind of problem: syntax error, unknown field, wrong type,
	// required, invalid value or conflict.
	Kind    string `json:"kind,omitempty"`
	Message string `json:"message"`
	// Error is the whole problem in one line, as the table prints it.
	Error string `json:"error"`
}

// validateFiles reads and validates the -f arguments offline.
func validateFiles(args []string, stdin io.Reader, td spiffeid.TrustDomain) validation {
	files, errs := readPolicyContents(args, stdin)
	errs = append(errs, policy.ValidateContents(files, td)...)
	res := validation{Files: len(files), Problems: []validationProblem{}}
	for _, err := range errs {
		for _, e := range unjoin(err) {
			res.Problems = append(res.Problems, problemOf(e))
		}
	}
	return res
}

// unjoin splits an errors.Join result into its errors, so each gets its own line.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		if _, isField := err.(*policy.FieldError); !isField {
			return j.Unwrap()
		}
	}
	return []error{err}
}

func problemOf(err error) validationProblem {
	var fe *policy.FieldError
	if !errors.As(err, &fe) {
		return validationProblem{Message: err.Error(), Error: err.Error()}
	}
	return validationProblem{
		File: fe.Source, Line: fe.Line, Document: fe.Doc, Policy: fe.Policy,
		Field: fe.Path, Kind: fe.Kind.Error(), Message: fe.Message, Error: fe.Error(),
	}
}

func (v validation) table(w io.Writer) error {
	for _, p := range v.Problems {
		if _, err := fmt.Fprintln(w, p.Error); err != nil {
			return err
		}
	}
	if len(v.Problems) > 0 {
		return nil
	}
	_, err := fmt.Fprintf(w, "no problems in %d %s\n", v.Files, plural(v.Files, "file"))
	return err
}

func plural(n int, noun string) string {
	if n == 1 {
		return noun
	}
	return noun + "s"
}
