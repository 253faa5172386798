package access

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"

	"golang.org/x/crypto/bcrypt"

	"github.com/flingerlab/flinger/drivers"
)

// User is one set of credentials: a role and, for a worker, its host.
type User struct {
	// Name is the NATS user name.
	Name string
	// Role is what the user may do.
	Role Role
	// Host is a worker's host file.
	Host *drivers.HostConfig
	// Password is the user's password; Config writes only its bcrypt hash.
	Password string
}

// NewPassword returns a random password (32 bytes, URL-safe base64).
func NewPassword() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// LabUsers returns the users of a lab: orchestrator, submitter, observer,
// and a worker per host file (named worker-<host>), each with a new
// password.
func LabUsers(hosts []*drivers.HostConfig) ([]User, error) {
	users := []User{{Name: "orchestrator", Role: Orchestrator}, {Name: "submitter", Role: Submitter}, {Name: "observer", Role: Observer}}
	seen := map[string]bool{}
	for _, h := range hosts {
		name := "worker-" + h.Host
		if seen[name] {
			return nil, fmt.Errorf("access: two host files name host %q", h.Host)
		}
		seen[name] = true
		users = append(users, User{Name: name, Role: Worker, Host: h})
	}
	for i := range users {
		p, err := NewPassword()
		if err != nil {
			return nil, err
		}
		users[i].Password = p
	}
	return users, nil
}

// Config returns a nats-server configuration block that authorizes users
// with their roles' permissions; passwords are written as bcrypt hashes.
// A server's configuration includes it (include auth.conf).
func Config(users []User, o Options) (string, error) {
	var b strings.Builder
	b.WriteString("# Flinger's users and what each may do; written by `flinger auth`.\n")
	b.WriteString("authorization {\n  users = [\n")
	for _, u := range users {
		oo := o
		oo.Host = u.Host
		perms, err := Permissions(u.Role, oo)
		if err != nil {
			return "", fmt.Errorf("user %s: %w", u.Name, err)
		}
		if u.Password == "" {
			return "", fmt.Errorf("user %s: no password", u.Name)
		}
		hash, err := bcrypt.GenerateFromPassword([]byte(u.Password), 11)
		if err != nil {
			return "", fmt.Errorf("user %s: %w", u.Name, err)
		}
		fmt.Fprintf(&b, "    # %s", u.Role)
		if u.Host != nil {
			fmt.Fprintf(&b, " of lab host %s", u.Host.Host)
		}
		fmt.Fprintf(&b, "\n    {\n      user: %s\n      password: %s\n      permissions: {\n", quote(u.Name), quote(string(hash)))
		fmt.Fprintf(&b, "        publish: { allow: %s }\n", quoteList(perms.Publish.Allow))
		fmt.Fprintf(&b, "        subscribe: { allow: %s }\n", quoteList(perms.Subscribe.Allow))
		b.WriteString("      }\n    }\n")
	}
	b.WriteString("  ]\n}\n")
	return b.String(), nil
}

// quote writes s as a string of the server's configuration language,
// which takes only \xXX, \t, \n, \r, \" and \\ escapes.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(&b, "\\x%02x", c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func quoteList(l []string) string {
	parts := make([]string, len(l))
	for i, s := range l {
		parts[i] = quote(s)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
