// Package buildinfo describes the running binary.
package buildinfo

import "runtime/debug"

// version, when set at link time (-ldflags "-X .../buildinfo.version=v1.2.3"),
// replaces the module version: image builds have no VCS information to embed.
var version string

// String describes the running binary from the build information the Go toolchain
// embeds: the module version (a tag, or "(devel)" for a build from a checkout), the
// commit it was built from, whether the tree had uncommitted changes, and the Go
// version. Fields the build did not record are left out.
func String() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown (no build information)"
	}
	v := info.Main.Version
	if version != "" {
		v = version
	} else if v == "" {
		v = "(devel)"
	}
	var revision, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if revision != "" {
		if len(revision) > 12 {
			revision = revision[:12]
		}
		v += ", commit " + revision
		if modified == "true" {
			v += " with uncommitted changes"
		}
	}
	return v + ", " + info.GoVersion
}
