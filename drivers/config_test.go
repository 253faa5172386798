package drivers_test

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/drivers"
	_ "github.com/flingerlab/flinger/drivers/fake" // registers fake_connector
	"github.com/flingerlab/flinger/events"
)

func TestParseHostExample(t *testing.T) {
	hc, err := drivers.ParseHost([]byte(`
host: lab1
devices:
  - agent_name: fake-001
    provision_type: fake_connector
    job_queues: [fake, fake-001]
    device_ip: 127.0.0.1
    env: {FOO: bar}
`), "lab.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := &drivers.HostConfig{
		Host: "lab1",
		Devices: []*drivers.DeviceConfig{{
			Name:     "fake-001",
			Type:     "fake_connector",
			Queues:   []string{"fake", "fake-001"},
			DeviceIP: "127.0.0.1",
			Env:      map[string]string{"FOO": "bar"},
			Raw: events.Data{
				"agent_name":     "fake-001",
				"provision_type": "fake_connector",
				"job_queues":     []any{"fake", "fake-001"},
				"device_ip":      "127.0.0.1",
				"env":            map[string]any{"FOO": "bar"},
			},
		}},
	}
	// Without an ssh section: the defaults, shared by every device.
	if hc.SSH == nil || hc.SSH.HostKeys != drivers.HostKeysTOFU || hc.Devices[0].SSH != hc.SSH {
		t.Errorf("SSH = %+v (device: %p), want the TOFU defaults shared with the device", hc.SSH, hc.Devices[0].SSH)
	}
	want.SSH, want.Devices[0].SSH = hc.SSH, hc.SSH
	want.ImageCache = drivers.ImageCacheConfig{Dir: filepath.Join(drivers.StateDir(), "image-cache"), Size: drivers.DefaultImageCacheSize}
	if !reflect.DeepEqual(hc, want) {
		t.Errorf("ParseHost =\n%#v\nwant\n%#v", hc.Devices[0], want.Devices[0])
	}
}

func TestParseHostFields(t *testing.T) {
	hostname, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		yaml  string
		check func(t *testing.T, hc *drivers.HostConfig)
	}{
		{"every key", `
host: lab2
run_dir: /var/lib/flinger/runs
devices:
  - agent_name: rpi-1
    provision_type: fake
    job_queues: rpi
    device_ip: 10.0.0.5
    env: {N: 0755, F: 1.10, B: true, Y: yes, E: , S: "a b"}
    reboot_script: snmpset -c private pdu 1.3.6.1 i 3
    serial_host: console.lab
    serial_port: 7001
    control_host: ctl.lab
    control_user: ubuntu
    global_timeout: 14400
    output_timeout: 900
    url_prefix: http://images.lab/
`, func(t *testing.T, hc *drivers.HostConfig) {
			d := hc.Devices[0]
			if hc.Host != "lab2" || hc.RunDir != "/var/lib/flinger/runs" {
				t.Errorf("host, run_dir = %q, %q", hc.Host, hc.RunDir)
			}
			got := []any{d.Name, d.Type, d.Queues, d.DeviceIP, d.RebootScript, d.SerialHost, d.SerialPort, d.ControlHost, d.ControlUser, d.GlobalTimeout, d.OutputTimeout}
			want := []any{"rpi-1", "fake_connector", []string{"rpi"}, "10.0.0.5", []string{"snmpset -c private pdu 1.3.6.1 i 3"}, "console.lab", 7001, "ctl.lab", "ubuntu", 14400, 900}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("fields = %v, want %v", got, want)
			}
			wantEnv := map[string]string{"N": "0755", "F": "1.10", "B": "true", "Y": "yes", "E": "", "S": "a b"}
			if !reflect.DeepEqual(d.Env, wantEnv) {
				t.Errorf("env = %v, want %v", d.Env, wantEnv)
			}
			if s, err := d.Raw.String("url_prefix", ""); err != nil || s != "http://images.lab/" {
				t.Errorf("Raw url_prefix = %q, %v", s, err)
			}
		}},
		{"name instead of agent_name, default host, duplicate queues", `
devices:
  - name: dev-a
    provision_type: fake_connector
    job_queues: [q, q, r]
    reboot_script: [a, b]
`, func(t *testing.T, hc *drivers.HostConfig) {
			d := hc.Devices[0]
			if d.Name != "dev-a" || hc.Host != hostname {
				t.Errorf("name, host = %q, %q; want dev-a, %q", d.Name, hc.Host, hostname)
			}
			if !slices.Equal(d.Queues, []string{"q", "r"}) || !slices.Equal(d.RebootScript, []string{"a", "b"}) {
				t.Errorf("queues, reboot_script = %v, %v", d.Queues, d.RebootScript)
			}
		}},
		{"same name and agent_name", `
devices:
  - {name: d, agent_name: d, provision_type: fake, job_queues: q}
`, func(t *testing.T, hc *drivers.HostConfig) {
			if hc.Devices[0].Name != "d" {
				t.Errorf("name = %q", hc.Devices[0].Name)
			}
		}},
		{"anchors, merge keys and other top-level sections", `
nats: {url: "nats://localhost:4222"}
x-rpi: &rpi
  provision_type: fake
  job_queues: [rpi]
  env: {BOARD: rpi4}
devices:
  - <<: *rpi
    agent_name: rpi-1
  - <<: *rpi
    agent_name: rpi-2
    env: {BOARD: rpi5}
`, func(t *testing.T, hc *drivers.HostConfig) {
			if len(hc.Devices) != 2 {
				t.Fatalf("%d devices", len(hc.Devices))
			}
			for i, board := range []string{"rpi4", "rpi5"} {
				d := hc.Devices[i]
				if d.Type != "fake_connector" || !slices.Equal(d.Queues, []string{"rpi"}) || d.Env["BOARD"] != board {
					t.Errorf("devices[%d] = %+v", i, d)
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hc, err := drivers.ParseHost([]byte(tc.yaml), "lab.yaml")
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, hc)
		})
	}
}

func TestParseHostErrors(t *testing.T) {
	const ok = "    provision_type: fake\n    job_queues: [q]\n"
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"invalid yaml", "devices: [", []string{"lab.yaml: yaml: "}},
		{"empty file", "", []string{"lab.yaml: devices: required"}},
		{"not a mapping", "- a\n", []string{"lab.yaml: must be a mapping with keys host, run_dir, ssh, image_cache, secrets_file, secrets_kv, health_checks, devices, got a list"}},
		{"no devices", "host: h\n", []string{"lab.yaml: devices: required"}},
		{"secrets_kv not a bool", "secrets_kv: yes please\ndevices:\n  - agent_name: a\n" + ok, []string{"lab.yaml: secrets_kv: must be true or false"}},
		{"two secret stores", "secrets_file: /s.yaml\nsecrets_kv: true\ndevices:\n  - agent_name: a\n" + ok, []string{"lab.yaml: secrets_kv: give secrets_file or secrets_kv, not both"}},
		{"empty devices", "devices: []\n", []string{"lab.yaml: devices: required"}},
		{"devices not a list", "devices: {a: 1}\n", []string{"lab.yaml: devices: must be a list of devices, got a mapping"}},
		{"host not a string", "host: [a]\ndevices:\n  - agent_name: a\n" + ok, []string{"lab.yaml: host: must be a string, got a list"}},
		{"run_dir not a string", "run_dir: 3\ndevices:\n  - agent_name: a\n" + ok, []string{"lab.yaml: run_dir: must be a string, got an integer"}},
		{"device not a mapping", "devices: [rpi]\n", []string{"lab.yaml: devices[0]: must be a mapping, got a string"}},
		{"missing agent_name", "devices:\n  - device_ip: 1.2.3.4\n" + ok, []string{"lab.yaml: devices[0]: agent_name: required"}},
		{"agent_name not a string", "devices:\n  - agent_name: 7\n" + ok, []string{"lab.yaml: devices[0]: agent_name: must be a string, got an integer"}},
		{"agent_name with a space", "devices:\n  - agent_name: a b\n" + ok, []string{`lab.yaml: devices[0]: agent_name: "a b" must not contain spaces`}},
		{"agent_name with a slash", "devices:\n  - agent_name: a/b\n" + ok, []string{`agent_name: "a/b" must not contain '/'`}},
		{"name differs from agent_name", "devices:\n  - agent_name: a\n    name: b\n" + ok, []string{`lab.yaml: devices[0] (a): name: "b" differs from agent_name "a"`}},
		{"duplicate agent_name", "devices:\n  - agent_name: a\n" + ok + "  - agent_name: b\n" + ok + "  - agent_name: a\n" + ok,
			[]string{"lab.yaml: devices[2] (a): agent_name: duplicate of devices[0]"}},
		{"key given twice", "devices:\n  - agent_name: a\n    agent_name: b\n" + ok, []string{"lab.yaml: devices[0]: agent_name: given twice"}},
		{"missing provision_type", "devices:\n  - agent_name: rpi-3\n    job_queues: [q]\n", []string{"lab.yaml: devices[0] (rpi-3): provision_type: required"}},
		{"unknown provision_type", "devices:\n  - agent_name: rpi-3\n    provision_type: muxpo\n    job_queues: [q]\n",
			[]string{`lab.yaml: devices[0] (rpi-3): provision_type: unknown type "muxpo" (known: `, "fake_connector"}},
		{"provision_type not a string", "devices:\n  - agent_name: a\n    provision_type: [fake]\n    job_queues: q\n", []string{"devices[0] (a): provision_type: must be a string, got a list"}},
		{"missing job_queues", "devices:\n  - agent_name: a\n  - agent_name: b\n  - agent_name: rpi-3\n    provision_type: fake\n",
			[]string{"lab.yaml: devices[2] (rpi-3): job_queues: required"}},
		{"empty job_queues", "devices:\n  - agent_name: a\n    provision_type: fake\n    job_queues: []\n", []string{"lab.yaml: devices[0] (a): job_queues: required"}},
		{"job_queues a mapping", "devices:\n  - agent_name: a\n    provision_type: fake\n    job_queues: {q: 1}\n", []string{"devices[0] (a): job_queues: must be a string or a list of strings, got a mapping"}},
		{"job_queues item not a string", "devices:\n  - agent_name: a\n    provision_type: fake\n    job_queues: [q, 3]\n", []string{"devices[0] (a): job_queues[1]: must be a string, got an integer"}},
		{"job_queues item empty", "devices:\n  - agent_name: a\n    provision_type: fake\n    job_queues: [q, '']\n", []string{"devices[0] (a): job_queues[1]: must not be empty"}},
		{"env not a mapping", "devices:\n  - agent_name: a\n" + ok + "    env: [A=1]\n", []string{"devices[0] (a): env: must be a mapping of names to values, got a list"}},
		{"env value a list", "devices:\n  - agent_name: a\n" + ok + "    env: {FOO: [1]}\n", []string{"devices[0] (a): env.FOO: must be a scalar (string, number or boolean), got a list"}},
		{"env value a mapping", "devices:\n  - agent_name: a\n" + ok + "    env: {FOO: {a: 1}}\n", []string{"devices[0] (a): env.FOO: must be a scalar (string, number or boolean), got a mapping"}},
		{"env name with =", "devices:\n  - agent_name: a\n" + ok + "    env: {'A=B': 1}\n", []string{`devices[0] (a): env: "A=B": not a valid variable name`}},
		{"reboot_script item not a string", "devices:\n  - agent_name: a\n" + ok + "    reboot_script: [{a: 1}]\n", []string{"devices[0] (a): reboot_script[0]: must be a string, got a mapping"}},
		{"device_ip not a string", "devices:\n  - agent_name: a\n" + ok + "    device_ip: [1]\n", []string{"devices[0] (a): device_ip: must be a string, got a list"}},
		{"serial_port too large", "devices:\n  - agent_name: a\n" + ok + "    serial_host: h\n    serial_port: 70000\n", []string{"devices[0] (a): serial_port: 70000 out of range (1-65535)"}},
		{"serial_port negative", "devices:\n  - agent_name: a\n" + ok + "    serial_host: h\n    serial_port: -1\n", []string{"devices[0] (a): serial_port: -1 out of range"}},
		{"serial_port not a number", "devices:\n  - agent_name: a\n" + ok + "    serial_host: h\n    serial_port: telnet\n", []string{"devices[0] (a): serial_port: must be an integer, got a string"}},
		{"serial_port without serial_host", "devices:\n  - agent_name: a\n" + ok + "    serial_port: 7000\n", []string{"devices[0] (a): serial_port: given without serial_host"}},
		{"negative global_timeout", "devices:\n  - agent_name: a\n" + ok + "    global_timeout: -1\n", []string{"devices[0] (a): global_timeout: must not be negative, got -1"}},
		{"negative output_timeout", "devices:\n  - agent_name: a\n" + ok + "    output_timeout: -5\n", []string{"devices[0] (a): output_timeout: must not be negative, got -5"}},
		{"output_timeout not a number", "devices:\n  - agent_name: a\n" + ok + "    output_timeout: 15m\n", []string{"devices[0] (a): output_timeout: must be an integer, got a string"}},
		{"every problem is reported", "devices:\n  - agent_name: a\n  - agent_name: b\n    provision_type: nope\n    job_queues: q\n    serial_host: h\n    serial_port: 0x1ffff\n",
			[]string{"devices[0] (a): provision_type: required", "devices[0] (a): job_queues: required", `devices[1] (b): provision_type: unknown type "nope"`, "devices[1] (b): serial_port: 131071 out of range"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hc, err := drivers.ParseHost([]byte(tc.yaml), "lab.yaml")
			if err == nil {
				t.Fatalf("ParseHost succeeded: %+v", hc)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func TestLoadHost(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "host.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(good, []byte("devices:\n  - {agent_name: a, provision_type: fake, job_queues: q}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("devices:\n  - {agent_name: a, job_queues: q}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if hc, err := drivers.LoadHost(good); err != nil || hc.Devices[0].Name != "a" {
		t.Errorf("LoadHost(good) = %+v, %v", hc, err)
	}
	for _, tc := range []struct{ path, want string }{
		{bad, bad + ": devices[0] (a): provision_type: required"},
		{filepath.Join(dir, "missing.yaml"), "reading host file: open " + filepath.Join(dir, "missing.yaml")},
	} {
		if _, err := drivers.LoadHost(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("LoadHost(%s) = %v, want an error containing %q", tc.path, err, tc.want)
		}
	}
}

func TestEnviron(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  drivers.DeviceConfig
		base []string
		want []string
	}{
		{"empty", drivers.DeviceConfig{Name: "d"}, nil, []string{"AGENT_NAME=d", "REBOOT_SCRIPT="}},
		{"env sorted after base, reboot_script joined",
			drivers.DeviceConfig{Name: "d", Env: map[string]string{"B": "2", "A": "1"}, RebootScript: []string{"pdu off 3", "pdu on 3"}},
			[]string{"PATH=/bin", "HOME=/root"},
			[]string{"PATH=/bin", "HOME=/root", "A=1", "B=2", "AGENT_NAME=d", "REBOOT_SCRIPT=pdu off 3;pdu on 3"}},
		{"later entries win, in place",
			drivers.DeviceConfig{Name: "d", Env: map[string]string{"HOME": "/home/lab", "AGENT_NAME": "from-env"}},
			[]string{"HOME=/root", "AGENT_NAME=from-base", "PATH=/bin", "PATH=/usr/bin"},
			[]string{"HOME=/home/lab", "AGENT_NAME=d", "PATH=/usr/bin", "REBOOT_SCRIPT="}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := slices.Clone(tc.base)
			if got := tc.cfg.Environ(tc.base); !slices.Equal(got, tc.want) {
				t.Errorf("Environ = %q, want %q", got, tc.want)
			}
			if !slices.Equal(base, tc.base) {
				t.Errorf("Environ changed its argument: %q", tc.base)
			}
		})
	}
}

func TestDeviceInfo(t *testing.T) {
	for _, tc := range []struct {
		cfg  drivers.DeviceConfig
		want map[string]any
	}{
		{drivers.DeviceConfig{Name: "d", DeviceIP: "10.0.0.1"}, map[string]any{"device_info": map[string]any{"agent_name": "d", "device_ip": "10.0.0.1"}}},
		{drivers.DeviceConfig{Name: "d"}, map[string]any{"device_info": map[string]any{"agent_name": "d"}}},
	} {
		if got := tc.cfg.DeviceInfo(); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("DeviceInfo(%+v) = %v, want %v", tc.cfg, got, tc.want)
		}
	}
}

func TestImageCacheSection(t *testing.T) {
	base := "run_dir: /srv/flinger\ndevices:\n  - {agent_name: d1, provision_type: fake, job_queues: [q]}\n"
	for _, tc := range []struct {
		name, section string
		want          drivers.ImageCacheConfig
		err           string
	}{
		{"default", "", drivers.ImageCacheConfig{Dir: "/srv/flinger/image-cache", Size: drivers.DefaultImageCacheSize}, ""},
		{"size and dir", "image_cache: {dir: /var/cache/img, size: 512MiB}\n", drivers.ImageCacheConfig{Dir: "/var/cache/img", Size: 512 << 20}, ""},
		{"disabled", "image_cache: {enabled: false}\n", drivers.ImageCacheConfig{Dir: "/srv/flinger/image-cache", Size: drivers.DefaultImageCacheSize, Disabled: true}, ""},
		{"bad size", "image_cache: {size: lots}\n", drivers.ImageCacheConfig{}, "image_cache.size"},
		{"unknown key", "image_cache: {sise: 1G}\n", drivers.ImageCacheConfig{}, "image_cache.sise: unknown key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hc, err := drivers.ParseHost([]byte(tc.section+base), "host.yaml")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("drivers.ParseHost = %v, want an error naming %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if hc.ImageCache != tc.want {
				t.Errorf("ImageCache = %+v, want %+v", hc.ImageCache, tc.want)
			}
		})
	}
	for in, want := range map[string]int64{"0": 0, "1024": 1024, "4K": 4 << 10, "20G": 20 << 30, "1TB": 1 << 40, "3 GiB": 3 << 30} {
		if got, err := drivers.ParseByteSize(in); err != nil || got != want {
			t.Errorf("drivers.ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}
