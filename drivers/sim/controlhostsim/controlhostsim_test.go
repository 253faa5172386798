package controlhostsim_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/controlhostsim"
)

func get(ctx context.Context, s *controlhostsim.Server, method, path, body string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+s.APIAddr()+path, strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// waitAPI waits until the API answers /health (up) or refuses (!up).
func waitAPI(t *testing.T, s *controlhostsim.Server, up bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for {
		_, err := get(ctx, s, http.MethodGet, controlhostsim.PathHealth, "")
		if (err == nil) == up {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the API did not become up=%v: %v", up, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// sshUp reports whether the host's SSH server answers: it sends its
// version line.
func sshUp(s *controlhostsim.Server) bool {
	c, err := net.DialTimeout("tcp", s.Host().Addr(), time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	b := make([]byte, 4)
	_, err = io.ReadFull(c, b)
	return err == nil && string(b) == "SSH-"
}

func TestPowerCycle(t *testing.T) {
	t.Parallel()
	s, err := controlhostsim.Start(t.Context(), controlhostsim.Options{BootTime: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if code, err := get(t.Context(), s, http.MethodPost, controlhostsim.PathSetupProvisioning, `{"usb":"DUT"}`); err != nil || code != 200 {
		t.Fatalf("setup/provisioning = %d, %v", code, err)
	}
	if calls := s.CallsTo(controlhostsim.PathSetupProvisioning); len(calls) != 1 || string(calls[0].Body) != `{"usb":"DUT"}` {
		t.Errorf("calls: %+v", calls)
	}
	if code, err := get(t.Context(), s, http.MethodPost, controlhostsim.PathPowerOff, ""); err != nil || code != 200 {
		t.Fatalf("poweroff = %d, %v", code, err)
	}
	if err := s.Host().WaitState(t.Context(), sim.Off); err != nil {
		t.Fatal(err)
	}
	waitAPI(t, s, false)
	if sshUp(s) || s.Up() {
		t.Error("the host still answers once down")
	}
	s.PowerOn()
	waitAPI(t, s, true)
	if !sshUp(s) || !s.Up() {
		t.Error("the host does not answer once back")
	}
	want := []string{"POST " + controlhostsim.PathSetupProvisioning, "POST " + controlhostsim.PathPowerOff, controlhostsim.EventDown, controlhostsim.EventPowerOn, controlhostsim.EventUp}
	if got := slices.DeleteFunc(s.Events(), func(e string) bool { return strings.HasPrefix(e, "GET ") }); !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	t.Run("comes back by itself", func(t *testing.T) {
		t.Parallel()
		s, err := controlhostsim.Start(t.Context(), controlhostsim.Options{DownTime: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		s.PowerOff()
		waitAPI(t, s, true)
	})
	t.Run("REST down", func(t *testing.T) {
		t.Parallel()
		s, err := controlhostsim.Start(t.Context(), controlhostsim.Options{Faults: controlhostsim.Faults{RESTDown: true}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := get(t.Context(), s, http.MethodGet, controlhostsim.PathHealth, ""); err == nil {
			t.Error("the API answers with RESTDown")
		}
		if !sshUp(s) {
			t.Error("the host is down with RESTDown")
		}
		s.SetFaults(controlhostsim.Faults{})
		waitAPI(t, s, true)
	})
	t.Run("never comes back", func(t *testing.T) {
		t.Parallel()
		s, err := controlhostsim.Start(t.Context(), controlhostsim.Options{Faults: controlhostsim.Faults{NeverComesBack: true}})
		if err != nil {
			t.Fatal(err)
		}
		s.PowerOff()
		s.PowerOn()
		if err := s.Host().WaitState(t.Context(), sim.Booting); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		if err := s.Host().WaitState(ctx, sim.Up); err == nil {
			t.Error("the host came back")
		}
	})
	t.Run("setup fails", func(t *testing.T) {
		t.Parallel()
		s, err := controlhostsim.Start(t.Context(), controlhostsim.Options{Faults: controlhostsim.Faults{SetupFails: true}})
		if err != nil {
			t.Fatal(err)
		}
		if code, err := get(t.Context(), s, http.MethodPost, controlhostsim.PathSetupTest, ""); err != nil || code != http.StatusInternalServerError {
			t.Errorf("setup/test = %d, %v; want 500", code, err)
		}
	})
}

func TestConfig(t *testing.T) {
	t.Parallel()
	s, err := controlhostsim.Start(t.Context(), controlhostsim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := s.Config()
	if c["control_host"] != "127.0.0.1" || c["control_port"] != s.SSHPort() || c["control_host_api_port"] != s.APIPort() || s.APIPort() == 0 {
		t.Errorf("Config() = %v", c)
	}
}
