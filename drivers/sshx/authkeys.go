package sshx

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
)

// installKeysScript appends the keys it reads on standard input (lines of
// "<base64 key blob> <authorized_keys line>") to authorized_keys, skipping
// those whose blob a line of the file (comments aside) already holds as a
// field, and prints how many it added. FLINGER_HOME, when set, replaces
// $HOME. No key is ever part of the command line.
const installKeysScript = `set -e
umask 077
h=${FLINGER_HOME:-$HOME}
if [ -z "$h" ]; then echo "no home directory" >&2; exit 1; fi
mkdir -p -- "$h/.ssh"
chmod 700 -- "$h/.ssh"
f=$h/.ssh/authorized_keys
if [ ! -e "$f" ]; then : > "$f"; fi
chmod 600 -- "$f"
if [ -s "$f" ] && [ -n "$(tail -c 1 -- "$f")" ]; then echo >> "$f"; fi
added=0
while IFS=' ' read -r blob line; do
	if [ -z "$blob" ]; then continue; fi
	if awk -v b="$blob" '!/^[ \t]*#/ { for (i = 1; i <= NF; i++) if ($i == b) { found = 1; exit } } END { exit !found }' "$f"; then
		continue
	fi
	printf '%s\n' "$line" >> "$f"
	added=$((added + 1))
done
echo "$added"
`

// InstallOption changes what InstallAuthorizedKeys does.
type InstallOption func(*installOptions)

type installOptions struct {
	home string
}

// WithHome installs into dir/.ssh/authorized_keys instead of the login
// user's home directory: for tests, or to install another user's keys
// while logged in as root (the files then stay owned by root).
func WithHome(dir string) InstallOption {
	return func(o *installOptions) { o.home = dir }
}

// InstallAuthorizedKeys appends public keys (authorized_keys lines, such as
// sshkeys.Fetcher returns) to ~/.ssh/authorized_keys on the device,
// creating ~/.ssh with mode 700 and the file with mode 600 when they are
// missing (and setting those modes when they are not). It is idempotent: a
// key the file already holds, with whatever options or comment, is not
// added again. Every key is checked before anything is done, and the keys
// are sent on the remote command's standard input, never in its command
// line. It returns how many keys it added.
func InstallAuthorizedKeys(ctx context.Context, c *Client, keys []string, opts ...InstallOption) (int, error) {
	var o installOptions
	for _, opt := range opts {
		opt(&o)
	}
	var in bytes.Buffer
	seen := map[string]bool{}
	for i, k := range keys {
		line := strings.TrimSpace(k)
		if line == "" || strings.ContainsAny(line, "\r\n\x00") {
			return 0, c.errorf("install authorized keys: key %d: must be one non-empty line", i)
		}
		pub, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return 0, c.errorf("install authorized keys: key %d (%.40q): %w", i, line, err)
		}
		if len(bytes.TrimSpace(rest)) > 0 {
			return 0, c.errorf("install authorized keys: key %d: more than one key", i)
		}
		blob := base64.StdEncoding.EncodeToString(pub.Marshal())
		if seen[blob] {
			continue
		}
		seen[blob] = true
		fmt.Fprintf(&in, "%s %s\n", blob, line)
	}
	if len(seen) == 0 {
		return 0, nil
	}
	var env map[string]string
	if o.home != "" {
		env = map[string]string{"FLINGER_HOME": o.home}
	}
	var stdout, stderr limitedBuffer
	if _, err := c.RunScript(ctx, installKeysScript, env, &in, &stdout, &stderr); err != nil {
		return 0, fmt.Errorf("install authorized keys: %w", withStderr(err, &stderr))
	}
	added, err := strconv.Atoi(strings.TrimSpace(stdout.String()))
	if err != nil {
		return 0, c.errorf("install authorized keys: unexpected output %q", stdout.String())
	}
	c.log.Info("ssh: installed authorized keys", "added", added, "already_present", len(seen)-added)
	return added, nil
}
