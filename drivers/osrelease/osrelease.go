// Package osrelease reads os-release files (/etc/os-release), which the
// drivers read from the images they write and from the systems their
// devices boot, to tell which system is which and to name it for the
// operator.
package osrelease

import (
	"slices"
	"strconv"
	"strings"
)

// Parse returns the variables of an os-release file, their values
// unquoted. Comments, blank lines and lines without "=" are skipped.
func Parse(s string) map[string]string {
	m := map[string]string{}
	for line := range strings.Lines(s) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || k == "" || strings.HasPrefix(k, "#") {
			continue
		}
		if u, err := strconv.Unquote(v); err == nil {
			v = u
		} else {
			v = strings.Trim(v, `"'`)
		}
		m[k] = v
	}
	return m
}

// PrettyName returns the PRETTY_NAME of an os-release file ("Ubuntu
// 24.04 LTS"), or "" when it has none.
func PrettyName(s string) string {
	return Parse(s)["PRETTY_NAME"]
}

// Same reports whether two os-release files describe the same system:
// the same lines, blank ones and surrounding space aside.
func Same(a, b string) bool {
	norm := func(s string) []string {
		var out []string
		for line := range strings.Lines(s) {
			if l := strings.TrimSpace(line); l != "" {
				out = append(out, l)
			}
		}
		return out
	}
	return slices.Equal(norm(a), norm(b))
}
