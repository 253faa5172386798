package sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Switch stands for a lab's power and boot-select hardware (a PDU, a relay
// board, a boot-mode jumper) driven by local scripts: each action it is
// given gets an executable script that, run on this machine as a device
// configuration's reboot_script, select_master_script, poweroff_script or
// control_host_reboot_script would be, asks the Switch over HTTP on
// loopback to run the action. The scripts are bash (they use its /dev/tcp)
// and need nothing else installed.
type Switch struct {
	dir string
	srv *http.Server
	ln  net.Listener
	log *slog.Logger

	mu      sync.Mutex
	actions map[string]func() error
	calls   map[string]int
}

var actionName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// StartSwitch starts a Switch whose scripts go into dir. It stops when ctx
// is done or Close is called.
func StartSwitch(ctx context.Context, dir string, log *slog.Logger) (*Switch, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("sim: switch: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("sim: switch: %w", err)
	}
	s := &Switch{dir: dir, ln: ln, log: log, actions: map[string]func() error{}, calls: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /action/{name}", s.serve)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	context.AfterFunc(ctx, s.Close)
	return s, nil
}

// Close stops the Switch; its scripts then fail.
func (s *Switch) Close() {
	_ = s.srv.Close()
}

// Addr returns the address the Switch listens on.
func (s *Switch) Addr() string { return s.ln.Addr().String() }

func (s *Switch) serve(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.mu.Lock()
	fn := s.actions[name]
	if fn != nil {
		s.calls[name]++
	}
	s.mu.Unlock()
	if fn == nil {
		http.Error(w, "no action "+name, http.StatusNotFound)
		return
	}
	s.log.Info("sim: switch action", "action", name)
	if err := fn(); err != nil {
		http.Error(w, strings.ReplaceAll(err.Error(), "\n", " "), http.StatusInternalServerError)
		return
	}
	fmt.Fprintln(w, "ok")
}

// switchScript is the script of an action: one HTTP request over bash's
// /dev/tcp; it prints the action's error and exits 1 when it failed.
const switchScript = `#!/bin/bash
# %[1]s: a simulated lab switch action.
exec 3<>/dev/tcp/%[2]s/%[3]s || { echo "%[1]s: the switch does not answer" >&2; exit 1; }
printf 'POST /action/%[1]s HTTP/1.0\r\nHost: switch\r\nContent-Length: 0\r\n\r\n' >&3
IFS= read -r status <&3
body=""
while IFS= read -r line <&3; do
  line=${line%%$'\r'}
  [ -z "$line" ] && break
done
body=$(cat <&3)
case "$status" in
  *" 200 "*) exit 0 ;;
esac
echo "%[1]s: $body" >&2
exit 1
`

// Script registers action under name and writes its script, dir/name,
// returning its path. Calling Script again with the same name replaces the
// action.
func (s *Switch) Script(name string, action func() error) (string, error) {
	if !actionName.MatchString(name) {
		return "", fmt.Errorf("sim: switch: bad action name %q", name)
	}
	if action == nil {
		return "", errors.New("sim: switch: nil action")
	}
	host, port, err := net.SplitHostPort(s.Addr())
	if err != nil {
		return "", fmt.Errorf("sim: switch: %w", err)
	}
	path := filepath.Join(s.dir, name)
	if err := os.WriteFile(path, fmt.Appendf(nil, switchScript, name, host, port), 0o755); err != nil {
		return "", fmt.Errorf("sim: switch: %w", err)
	}
	s.mu.Lock()
	s.actions[name] = action
	s.mu.Unlock()
	return path, nil
}

// Calls returns how many times the action name was called.
func (s *Switch) Calls(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[name]
}
