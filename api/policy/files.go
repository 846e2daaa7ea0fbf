package policy

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// fileExts are the extensions of the files ReadFiles takes from a directory.
var fileExts = []string{".yaml", ".yml", ".json"}

// ReadFiles parses the policies in files and directories with [Parse]. A directory
// contributes its *.yaml, *.yml and *.json files, in name order, but not its
// subdirectories; a file named explicitly is read whatever its name. Each file is
// named in errors as its path was given (joined to its directory's).
//
// The policies come back in file order. The error joins every problem: files that
// cannot be read, directories without policy files, and the [*FieldError]s of Parse,
// with the same partial-result contract as Parse.
func ReadFiles(paths []string) ([]Policy, error) {
	_, policies, errs := readFiles(paths)
	return policies, errors.Join(errs...)
}

// readFiles returns the files it read, their policies, and every problem.
func readFiles(paths []string) (files []string, policies []Policy, errs []error) {
	files, err := ExpandPaths(paths)
	if err != nil {
		errs = append(errs, err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("failed to read policy file: %w", err))
			continue
		}
		ps, err := Parse(data, f)
		policies = append(policies, ps...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return files, policies, errs
}

// ExpandPaths returns the files ReadFiles and ValidateFiles read for paths: a
// directory is replaced by its *.yaml, *.yml and *.json files, in name order, without
// its subdirectories; any other path is kept. The error joins every path that cannot
// be read and every directory without policy files; the files found are returned
// even then.
func ExpandPaths(paths []string) ([]string, error) {
	var (
		files []string
		errs  []error
	)
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("failed to read policy file: %w", err))
			continue
		}
		if !info.IsDir() {
			files = append(files, p)
			continue
		}
		entries, err := os.ReadDir(p) // sorted by name
		if err != nil {
			errs = append(errs, fmt.Errorf("failed to read policy directory: %w", err))
			continue
		}
		n := len(files)
		for _, e := range entries {
			if !e.IsDir() && slices.Contains(fileExts, filepath.Ext(e.Name())) {
				files = append(files, filepath.Join(p, e.Name()))
			}
		}
		if len(files) == n {
			errs = append(errs, fmt.Errorf("directory %s holds no policy files (%v)", p,
				fileExts))
		}
	}
	return files, errors.Join(errs...)
}

// File is the content of one policy file, for [ValidateContents].
type File struct {
	// Name identifies the content in errors, usually the path of its file.
	Name string
	// Data holds YAML or JSON documents.
	Data []byte
}

// ValidateFiles reads policies as [ReadFiles] does and validates them as a set with
// [ValidateContents], in trust domain td. It returns every problem, one error per
// problem: first the files or directories that cannot be read, then the
// [*FieldError]s. It returns nil when every policy is valid.
//
// This is `meshctl policy validate`: it reports everything wrong in one run.
func ValidateFiles(paths []string, td spiffeid.TrustDomain) []error {
	if td.IsZero() {
		return []error{errNoTrustDomain}
	}
	files, err := ExpandPaths(paths)
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	contents := make([]File, 0, len(files))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("failed to read policy file: %w", err))
			continue
		}
		contents = append(contents, File{Name: f, Data: data})
	}
	return append(flatten(errs), ValidateContents(contents, td)...)
}

// ValidateContents parses every file with [Parse] and validates all their policies
// as one set with [ValidateSet], in trust domain td: it is [ValidateFiles] for
// contents already read, e.g. from standard input. It returns every problem as its
// own [*FieldError], ordered by file, document and line, or nil when every policy is
// valid.
func ValidateContents(files []File, td spiffeid.TrustDomain) []error {
	if td.IsZero() {
		return []error{errNoTrustDomain}
	}
	var (
		policies []Policy
		errs     []error
	)
	for _, f := range files {
		ps, err := Parse(f.Data, f.Name)
		policies = append(policies, ps...)
		errs = append(errs, err)
	}
	errs = append(errs, ValidateSet(policies, td))
	flat := flatten(errs)

	// Field errors sort by the order of their files, then document and line; other
	// errors come first, as they were found.
	order := make(map[string]int, len(files))
	for i, f := range files {
		if _, ok := order[f.Name]; !ok {
			order[f.Name] = i
		}
	}
	slices.SortStableFunc(flat, func(a, b error) int {
		fa, oka := a.(*FieldError)
		fb, okb := b.(*FieldError)
		if !oka || !okb {
			return cmp.Compare(rank(oka), rank(okb))
		}
		return cmp.Or(cmp.Compare(order[fa.Source], order[fb.Source]),
			cmp.Compare(fa.Doc, fb.Doc), cmp.Compare(fa.Line, fb.Line))
	})
	return flat
}

// flatten replaces each joined error by the [*FieldError]s it holds, one per problem,
// and drops nil errors.
func flatten(errs []error) []error {
	var flat []error
	for _, err := range errs {
		if fes := FieldErrors(err); len(fes) > 0 {
			for _, fe := range fes {
				flat = append(flat, fe)
			}
			continue
		}
		if err != nil {
			flat = append(flat, err)
		}
	}
	return flat
}

func rank(isField bool) int {
	if isField {
		return 1
	}
	return 0
}
