package muxpi

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
)

func TestParseOptions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		raw     events.Data
		mux     string // the mux CLI, "-" for none
		local   string
		wantErr string
	}{
		{name: "defaults", raw: events.Data{}, mux: "-", local: "stm -ts"},
		{name: "zapper", raw: events.Data{"control_switch_local_cmd": "zapper sdwire set TS"}, mux: "zapper", local: "zapper sdwire set TS"},
		{name: "prefix kept", raw: events.Data{"control_switch_local_cmd": "sudo -n muxctl typecmux set TS"}, mux: "sudo -n muxctl"},
		{name: "sdwire only as part of a word", raw: events.Data{"control_switch_local_cmd": "sdwire-ctl --ts"}, mux: "-"},
		{name: "empty switch command", raw: events.Data{"control_switch_device_cmd": "  "}, wantErr: "control_switch_device_cmd"},
		{name: "switch command not a string", raw: events.Data{"control_switch_local_cmd": 3}, wantErr: "control_switch_local_cmd"},
		{name: "bad duration", raw: events.Data{"boot_timeout": "soon"}, wantErr: "boot_timeout"},
		{name: "zero duration", raw: events.Data{"boot_check_interval": 0}, wantErr: "boot_check_interval"},
		{name: "too long", raw: events.Data{"flash_timeout": "48h"}, wantErr: "flash_timeout"},
		{name: "empty post_provision_script line", raw: events.Data{"post_provision_script": []any{"sync", " "}}, wantErr: "post_provision_script[1]"},
		{name: "control_host_reboot_script not strings", raw: events.Data{"control_host_reboot_script": []any{1}}, wantErr: "control_host_reboot_script[0]"},
		{name: "decompress", raw: events.Data{"decompress": "sideways"}, wantErr: "decompress"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o, err := parseOptions(&drivers.DeviceConfig{Name: "d", Raw: tc.raw})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseOptions = %v, want an error naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			mux := "-"
			if o.muxCLI != nil {
				mux = strings.Join(o.muxCLI, " ")
			}
			if mux != tc.mux {
				t.Errorf("mux CLI %q, want %q", mux, tc.mux)
			}
			if tc.local != "" && strings.Join(o.localCmd, " ") != tc.local {
				t.Errorf("local command %q", o.localCmd)
			}
		})
	}
	if _, err := New(&drivers.DeviceConfig{Name: "d", RebootScript: []string{"ok", ""}}); err == nil || !strings.Contains(err.Error(), "reboot_script[1]") {
		t.Errorf("New with an empty reboot_script command: %v", err)
	}
}

func TestCEOEMIoT(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ info, want string }{
		{"iot-limerick-kria-classic-desktop-2204-x07-20230302-63\n", TypeCEOEMIoTBefore24},
		{"iot-sim-board-classic-server-2404-20240101-1\n", TypeCEOEMIoT24},
		{"iot-pc-core-24-20240501\n", TypeCEOEMIoT24},
		{"iot-pc-core-22-20230101\n", TypeCEOEMIoTBefore24},
		{"iot-pc-classic-server-2510-1\n", TypeCEOEMIoT24},
		{"Ubuntu 24.04 LTS \"Noble Numbat\" - Release arm64\n", ""},
		{"", ""},
	} {
		if got := ceOEMIoT(tc.info); got != tc.want {
			t.Errorf("ceOEMIoT(%q) = %q, want %q", tc.info, got, tc.want)
		}
	}
}

func TestParseProvisionData(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	att := filepath.Join(dir, "attachments", "provision")
	if err := os.MkdirAll(filepath.Join(att, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(att, "img.xz"), filepath.Join(att, "sub", "img.zst"), filepath.Join(dir, "secret")} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(dir, "secret"), filepath.Join(att, "link")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		pd      events.Data
		wantErr string
		check   func(t *testing.T, pd provisionData)
	}{
		{name: "url", pd: events.Data{"url": "https://example.com/x.img.xz"}, check: func(t *testing.T, pd provisionData) {
			if pd.src.URL != "https://example.com/x.img.xz" || !pd.createUser || pd.media != "" {
				t.Errorf("%+v", pd)
			}
		}},
		{name: "url wins over use_attachment", pd: events.Data{"url": "http://h/x", "use_attachment": "img.xz"}, check: func(t *testing.T, pd provisionData) {
			if pd.src.URL == "" || pd.src.Path != "" {
				t.Errorf("%+v", pd.src)
			}
		}},
		{name: "attachment", pd: events.Data{"use_attachment": "img.xz", "sha256": "ab", "media": "usb", "create_user": false}, check: func(t *testing.T, pd provisionData) {
			want, _ := filepath.EvalSymlinks(filepath.Join(att, "img.xz"))
			if pd.src.Path != want || pd.src.SHA256 != "ab" || pd.media != "usb" || pd.createUser {
				t.Errorf("%+v", pd)
			}
		}},
		{name: "attachment in a subdirectory", pd: events.Data{"use_attachment": "sub/img.zst"}},
		{name: "no url", pd: events.Data{"delay": "100s"}, wantErr: "provision_data.url"},
		{name: "url not a string", pd: events.Data{"url": 3}, wantErr: "provision_data.url"},
		{name: "file url", pd: events.Data{"url": "file:///etc/passwd"}, wantErr: "provision_data.url"},
		{name: "url without host", pd: events.Data{"url": "http:///x"}, wantErr: "provision_data.url"},
		{name: "url with a newline", pd: events.Data{"url": "http://h/x\n; touch PWNED"}, wantErr: "provision_data.url"},
		{name: "attachment escapes", pd: events.Data{"use_attachment": "../../secret"}, wantErr: "use_attachment"},
		{name: "absolute attachment", pd: events.Data{"use_attachment": filepath.Join(dir, "secret")}, wantErr: "use_attachment"},
		{name: "attachment symlink escapes", pd: events.Data{"use_attachment": "link"}, wantErr: "leads outside"},
		{name: "attachment is a directory", pd: events.Data{"use_attachment": "sub"}, wantErr: "not a regular file"},
		{name: "missing attachment", pd: events.Data{"use_attachment": "nope.img"}, wantErr: "no provisioning attachment"},
		{name: "bad media", pd: events.Data{"url": "http://h/x", "media": "emmc"}, wantErr: "provision_data.media"},
		{name: "create_user not a boolean", pd: events.Data{"url": "http://h/x", "create_user": "no"}, wantErr: "create_user"},
		{name: "boot_check_url", pd: events.Data{"url": "http://h/x", "boot_check_url": "http://$DEVICE_IP:8080/ok"}, check: func(t *testing.T, pd provisionData) {
			if pd.bootCheckURL != "http://$DEVICE_IP:8080/ok" {
				t.Errorf("%q", pd.bootCheckURL)
			}
		}},
		{name: "bad boot_check_url", pd: events.Data{"url": "http://h/x", "boot_check_url": "gopher://$DEVICE_IP/"}, wantErr: "boot_check_url"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pd, err := parseProvisionData(&drivers.Run{Dir: dir, Job: &events.Job{ProvisionData: tc.pd}})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseProvisionData = %v, want an error mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.check != nil {
				tc.check(t, pd)
			}
		})
	}
}

func TestGoodLabel(t *testing.T) {
	t.Parallel()
	for l, want := range map[string]bool{
		"writable": true, "system-boot": true, "Ubuntu-Server 24.04 LTS amd64": true,
		"": false, ".": false, "..": false, "../etc": false, "a/b": false, "x\ny": false,
	} {
		if got := goodLabel(l); got != want {
			t.Errorf("goodLabel(%q) = %t", l, got)
		}
	}
}
