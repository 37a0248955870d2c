package main

import (
	"fmt"
	"io"
	"runtime/debug"
)

// buildVersion describes the running binary from the build information
// the Go toolchain embeds: the module version (a tag when installed with
// `go install …@vX`, "(devel)" in a checkout), the VCS commit and its
// time, whether the tree had uncommitted changes, and the Go version.
// -ldflags "-X main.version=…" overrides the version.
type buildVersion struct {
	Version  string
	Commit   string
	Time     string
	Modified bool
	Go       string
}

func readBuildVersion(override string, info *debug.BuildInfo, ok bool) buildVersion {
	v := buildVersion{Version: override, Commit: "unknown", Time: "unknown"}
	if !ok || info == nil {
		if v.Version == "" {
			v.Version = "dev"
		}
		return v
	}
	v.Go = info.GoVersion
	if v.Version == "" || v.Version == "dev" {
		v.Version = info.Main.Version
		if v.Version == "" || v.Version == "(devel)" {
			v.Version = "dev"
		}
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

func (v buildVersion) String() string {
	commit := v.Commit
	if v.Modified {
		commit += " (modified)"
	}
	return fmt.Sprintf("levee %s\ncommit %s\ncommit time %s\ngo %s\n", v.Version, commit, v.Time, v.Go)
}

// current is the running binary's version. (The Go toolchain records the
// commit's time, not the build's: a binary's build time is not in its
// build information, and a reproducible build has none.)
func current() buildVersion {
	info, ok := debug.ReadBuildInfo()
	return readBuildVersion(version, info, ok)
}

func printVersion(w io.Writer) { fmt.Fprint(w, current()) }
