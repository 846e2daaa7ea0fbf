package store

import (
	"cmp"
	"slices"
)

// sortAuthorities orders authorities oldest first, then by ID for equal times.
func sortAuthorities(as []Authority) {
	slices.SortStableFunc(as, func(a, b Authority) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
}
