package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestUnifiedDiff(t *testing.T) {
	lines := func(s string) []string {
		if s == "" {
			return nil
		}
		return strings.Split(s, " ")
	}
	tests := []struct {
		name string
		a, b string
		want []string
	}{{
		name: "equal texts have no hunks",
		a:    "a b c", b: "a b c",
	}, {
		name: "a new text is all additions",
		a:    "", b: "a b",
		want: []string{"@@ -0,0 +1,2 @@", "+a", "+b"},
	}, {
		name: "a removed text is all removals",
		a:    "a b", b: "",
		want: []string{"@@ -1,2 +0,0 @@", "-a", "-b"},
	}, {
		name: "a change keeps two lines of context on each side",
		a:    "1 2 3 4 5 6 7", b: "1 2 3 x 5 6 7",
		want: []string{"@@ -2,5 +2,5 @@", " 2", " 3", "-4", "+x", " 5", " 6"},
	}, {
		name: "changes close together share a hunk",
		a:    "1 2 3 4 5 6", b: "x 2 3 4 5 y",
		want: []string{"@@ -1,6 +1,6 @@", "-1", "+x", " 2", " 3", " 4", " 5", "-6", "+y"},
	}, {
		name: "changes far apart get a hunk each",
		a:    "1 2 3 4 5 6 7 8 9", b: "x 2 3 4 5 6 7 8 y",
		want: []string{"@@ -1,3 +1,3 @@", "-1", "+x", " 2", " 3",
			"@@ -7,3 +7,3 @@", " 7", " 8", "-9", "+y"},
	}, {
		name: "an insertion in the middle",
		a:    "1 2 3 4", b: "1 2 n 3 4",
		want: []string{"@@ -1,4 +1,5 @@", " 1", " 2", "+n", " 3", " 4"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, unifiedDiff(lines(tt.a), lines(tt.b), 2))
		})
	}
}
