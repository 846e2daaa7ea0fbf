package policy_test

import (
	"bufio"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/api/policy"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// assertGolden compares got with testdata/name, or rewrites that file under -update.
func assertGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		require.NoError(t, os.WriteFile(path, got, 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "missing golden file: run go test ./api/policy -update")
	require.Equal(t, string(want), string(got), "output differs from %s; if the change "+
		"is intended, run go test ./api/policy -update", path)
}

// kindsByName are the problem kinds as the "# want:" markers name them.
var kindsByName = map[string]error{
	"syntax":        policy.ErrSyntax,
	"unknown-field": policy.ErrUnknownField,
	"type":          policy.ErrType,
	"required":      policy.ErrRequired,
	"invalid":       policy.ErrInvalid,
	"conflict":      policy.ErrConflict,
}

var wantMarker = regexp.MustCompile(`# want: (\S+) (\S+)`)

// problem is one reported or expected problem, reduced to what the markers say.
type problem struct {
	file string
	line int
	kind string
	path string
}

// markedProblems reads the "# want: <kind> <path>" markers of the files in dir.
func markedProblems(t *testing.T, dir string) []problem {
	t.Helper()
	var want []problem
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	require.NoError(t, err)
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		sc := bufio.NewScanner(strings.NewReader(string(data)))
		for line := 1; sc.Scan(); line++ {
			for _, m := range wantMarker.FindAllStringSubmatch(sc.Text(), -1) {
				require.Contains(t, kindsByName, m[1], "%s:%d: unknown kind", f, line)
				path := m[2]
				if path == "-" {
					path = ""
				}
				want = append(want, problem{file: f, line: line, kind: m[1], path: path})
			}
		}
	}
	return want
}

// kindName names the kind of a problem as the markers do.
func kindName(t *testing.T, fe *policy.FieldError) string {
	t.Helper()
	for name, kind := range kindsByName {
		if errors.Is(fe, kind) {
			return name
		}
	}
	t.Fatalf("problem of no known kind: %v", fe)
	return ""
}

// Validating the directory of broken files reports exactly the problems marked in
// them, one error each, in file and line order; the printed errors are a golden file.
func TestValidateFilesBroken(t *testing.T) {
	dir := filepath.Join("testdata", "broken")
	want := markedProblems(t, dir)
	require.NotEmpty(t, want)

	errs := policy.ValidateFiles([]string{dir}, td)

	var got []problem
	var printed strings.Builder
	for _, err := range errs {
		var fe *policy.FieldError
		require.ErrorAs(t, err, &fe, "every problem of a readable file is a FieldError")
		require.NotZero(t, fe.Line, "every problem has a line: %v", fe)
		require.NotZero(t, fe.Doc, "every problem has a document: %v", fe)
		got = append(got, problem{file: fe.Source, line: fe.Line, kind: kindName(t, fe),
			path: fe.Path})
		printed.WriteString(err.Error() + "\n")
	}
	require.Equal(t, want, got, "the reported problems are the marked ones, in order")
	assertGolden(t, "broken.golden", []byte(printed.String()))
}

func TestValidateFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(data), 0o600))
		return p
	}
	good := write("good.yml", basePolicy)
	write("notes.txt", "not a policy")
	other := strings.Replace(basePolicy, "name: payments-charge", "name: payments-refund", 1)
	explicit := write("policy.txt", other)

	t.Run("a directory of valid files has no problems", func(t *testing.T) {
		require.Empty(t, policy.ValidateFiles([]string{dir}, td))
	})
	t.Run("a file named explicitly is read whatever its extension", func(t *testing.T) {
		require.Empty(t, policy.ValidateFiles([]string{good, explicit}, td))
		ps, err := policy.ReadFiles([]string{dir, explicit})
		require.NoError(t, err)
		require.Len(t, ps, 2)
		require.Equal(t, good, ps[0].Origin.Source)
		require.Equal(t, explicit, ps[1].Origin.Source)
	})
	t.Run("the same file twice defines its policies twice", func(t *testing.T) {
		errs := policy.ValidateFiles([]string{good, good}, td)
		require.Len(t, errs, 1)
		require.ErrorIs(t, errs[0], policy.ErrConflict)
	})
	t.Run("a missing file is reported, and the rest still checked", func(t *testing.T) {
		bad := write("bad.yaml", strings.Replace(basePolicy, "[POST]", "[post]", 1))
		errs := policy.ValidateFiles([]string{filepath.Join(dir, "nope.yaml"), bad}, td)
		require.Len(t, errs, 2)
		require.ErrorIs(t, errs[0], os.ErrNotExist)
		require.ErrorIs(t, errs[1], policy.ErrInvalid)
	})
	t.Run("a directory without policy files is reported", func(t *testing.T) {
		errs := policy.ValidateFiles([]string{t.TempDir()}, td)
		require.Len(t, errs, 1)
		var fe *policy.FieldError
		require.False(t, errors.As(errs[0], &fe))
	})
}
