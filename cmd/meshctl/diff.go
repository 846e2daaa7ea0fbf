package main

import "fmt"

// unifiedDiff returns the hunks of a unified diff from a to b, with up to context
// unchanged lines around each change: "@@ -l,n +l,n @@" headers, then lines starting
// with ' ', '-' or '+'. It returns nothing when a and b are equal.
//
// It finds a longest common subsequence in O(len(a)·len(b)) time and memory, which is
// fine for policy documents of a few hundred lines.
func unifiedDiff(a, b []string, context int) []string {
	ops := diffOps(a, b)
	var out []string
	for start := 0; start < len(ops); {
		first := nextChange(ops, start)
		if first == len(ops) {
			break
		}
		// Extend the hunk while the next change is close enough to share context.
		last := first
		for {
			next := nextChange(ops, last+1)
			if next == len(ops) || next-last-1 > 2*context {
				break
			}
			last = next
		}
		lo, hi := max(first-context, 0), min(last+context+1, len(ops))
		out = append(out, hunkHeader(ops, lo, hi))
		for _, op := range ops[lo:hi] {
			out = append(out, string(op.kind)+op.line)
		}
		start = hi
	}
	return out
}

// diffOp is one line of the edit script: kept (' '), removed ('-') or added ('+').
// aLine and bLine count the lines of a and b before it.
type diffOp struct {
	kind         byte
	line         string
	aLine, bLine int
}

// diffOps computes the edit script, removals before additions within a change.
func diffOps(a, b []string) []diffOp {
	// lcs[i][j] is the length of a longest common subsequence of a[i:] and b[j:].
	lcs := make([][]int, len(a)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var ops []diffOp
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case i < len(a) && j < len(b) && a[i] == b[j]:
			ops = append(ops, diffOp{' ', a[i], i, j})
			i, j = i+1, j+1
		case i < len(a) && (j == len(b) || lcs[i+1][j] >= lcs[i][j+1]):
			ops = append(ops, diffOp{'-', a[i], i, j})
			i++
		default:
			ops = append(ops, diffOp{'+', b[j], i, j})
			j++
		}
	}
	return ops
}

// nextChange returns the index of the first change at or after i, or len(ops).
func nextChange(ops []diffOp, i int) int {
	for i < len(ops) && ops[i].kind == ' ' {
		i++
	}
	return i
}

// hunkHeader writes "@@ -start,count +start,count @@" for ops[lo:hi]. As in GNU diff,
// an empty range starts at the line before it.
func hunkHeader(ops []diffOp, lo, hi int) string {
	var aCount, bCount int
	for _, op := range ops[lo:hi] {
		if op.kind != '+' {
			aCount++
		}
		if op.kind != '-' {
			bCount++
		}
	}
	aStart, bStart := ops[lo].aLine+1, ops[lo].bLine+1
	if aCount == 0 {
		aStart--
	}
	if bCount == 0 {
		bStart--
	}
	return fmt.Sprintf("@@ -%d,%d +%d,%d @@", aStart, aCount, bStart, bCount)
}
