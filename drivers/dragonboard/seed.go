package dragonboard

import (
	"slices"
	"strings"
)

// The cloud-init NoCloud seed that gives the image the user ubuntu with
// the password ubuntu and password logins over SSH, as Testflinger's
// connectors write it (meta-data names instance-id, which cloud-init
// reads; Testflinger writes instance_id).
const (
	seedMetaData = "instance-id: cloud-image\n"
	seedUserData = `#cloud-config
password: ubuntu
chpasswd:
  list:
    - ubuntu:ubuntu
  expire: false
ssh_pwauth: true
`
)

// releaseName returns the PRETTY_NAME of an os-release, or "" when it has none.
func releaseName(osRelease string) string {
	for line := range strings.Lines(osRelease) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "PRETTY_NAME="); ok {
			return strings.Trim(v, `"'`)
		}
	}
	return ""
}

// sameRelease reports whether two os-release files describe the same
// system (the same lines, ignoring blank ones and surrounding space).
func sameRelease(a, b string) bool {
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
