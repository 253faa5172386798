package lab

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/events"
)

// SimKey is the device key that makes a device of a lab file simulated:
// `sim: {}` (or `sim: true`) starts the simulator of the device's
// connector type, with the settings the mapping gives, and points the
// device's configuration at it.
const SimKey = "sim"

// Simulators are the simulated devices of a lab.
type Simulators struct {
	devices []sim.LabDevice
}

// Close stops every simulator.
func (s *Simulators) Close() {
	if s == nil {
		return
	}
	for _, d := range s.devices {
		d.Close()
	}
	s.devices = nil
}

// Len returns how many simulated devices run.
func (s *Simulators) Len() int {
	if s == nil {
		return 0
	}
	return len(s.devices)
}

// StartSimulators starts a simulator for every device of host whose entry
// has a sim key, in dir (a directory of its own per device), and rewrites
// the device's configuration to reach it: the keys the simulator gives
// (device_ip, ssh_port, control_host, reboot_script, ...) are added, and
// those the entry sets itself (a timeout, say) are kept. The simulators
// accept the host's SSH key file (ssh.key_file); a host with none is
// given one, made in dir. The host-key records of the simulated devices
// are reset, since a simulator has new host keys each time it starts.
// Every device is tried; the errors are joined, each naming its device.
func StartSimulators(ctx context.Context, host *drivers.HostConfig, dir string, log *slog.Logger) (*Simulators, error) {
	if log == nil {
		log = slog.Default()
	}
	var simulated []*drivers.DeviceConfig
	for _, d := range host.Devices {
		if _, ok := d.Raw[SimKey]; ok {
			simulated = append(simulated, d)
		}
	}
	if len(simulated) == 0 {
		return &Simulators{}, nil
	}
	if host.SSH == nil {
		host.SSH = drivers.DefaultSSHSettings(host.RunDir)
	}
	pub, err := labKey(host.SSH, dir)
	if err != nil {
		return nil, err
	}
	s := &Simulators{}
	var errs []error
	for _, d := range simulated {
		settings, err := simSettings(d.Raw[SimKey])
		if err != nil {
			errs = append(errs, fmt.Errorf("device %s: %s: %w", d.Name, SimKey, err))
			continue
		}
		ddir := filepath.Join(dir, d.Name)
		if err := os.MkdirAll(ddir, 0o750); err != nil {
			errs = append(errs, fmt.Errorf("device %s: %w", d.Name, err))
			continue
		}
		dev, err := sim.StartLab(ctx, d.Type, sim.LabOptions{
			Name: d.Name, Dir: ddir, AuthorizedKeys: []ssh.PublicKey{pub}, Settings: settings,
			Log: log.With("sim", d.Name),
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("device %s: %w", d.Name, err))
			continue
		}
		s.devices = append(s.devices, dev)
		if err := apply(d, dev.Config()); err != nil {
			errs = append(errs, fmt.Errorf("device %s: the simulator's configuration: %w", d.Name, err))
			continue
		}
		for _, name := range hostKeyNames(d.Name) {
			if err := host.SSH.Policy().Reset(name); err != nil {
				errs = append(errs, fmt.Errorf("device %s: resetting the recorded host key: %w", d.Name, err))
			}
		}
		log.Info("simulated device started", "device", d.Name, "type", d.Type)
	}
	if len(errs) > 0 {
		s.Close()
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// hostKeyNames are the names under which drivers record the host keys of
// a device's hosts: the device, its control host, its sidecar and its
// master image.
func hostKeyNames(device string) []string {
	return []string{device, device + "-control", device + "-sidecar", device + "-master"}
}

// simSettings reads the sim key: true, null or a mapping.
func simSettings(v any) (map[string]any, error) {
	switch v := v.(type) {
	case nil:
		return map[string]any{}, nil
	case bool:
		if !v {
			return nil, errors.New("false: remove the key for a real device")
		}
		return map[string]any{}, nil
	case map[string]any:
		return v, nil
	}
	return nil, fmt.Errorf("must be true or a mapping of simulator settings, got %s", events.TypeName(v))
}

// apply merges a simulator's keys into a device's configuration; a key
// the device's entry sets itself is kept, so that a lab file can tune a
// simulated device's timeouts.
func apply(d *drivers.DeviceConfig, simKeys map[string]any) error {
	keys := map[string]any{}
	for k, v := range simKeys {
		if _, set := d.Raw[k]; !set {
			keys[k] = v
		}
	}
	raw := events.Data{}
	for k, v := range d.Raw {
		raw[k] = v
	}
	for k, v := range keys {
		raw[k] = v
	}
	d.Raw = raw
	str := func(k string) string {
		s, _ := keys[k].(string)
		return s
	}
	if _, ok := keys["device_ip"]; ok {
		d.DeviceIP = str("device_ip")
	}
	if _, ok := keys["control_host"]; ok {
		d.ControlHost = str("control_host")
	}
	if _, ok := keys["control_user"]; ok {
		d.ControlUser = str("control_user")
	}
	if _, ok := keys["serial_host"]; ok {
		d.SerialHost = str("serial_host")
	}
	var err error
	if _, ok := keys["ssh_port"]; ok {
		if d.SSHPort, err = raw.Int("ssh_port", 0); err != nil {
			return err
		}
	}
	if _, ok := keys["serial_port"]; ok {
		if d.SerialPort, err = raw.Int("serial_port", 0); err != nil {
			return err
		}
	}
	switch v := keys["reboot_script"].(type) {
	case nil:
	case []string:
		d.RebootScript = v
	case []any:
		d.RebootScript = d.RebootScript[:0:0]
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("reboot_script[%d]: not a string", i)
			}
			d.RebootScript = append(d.RebootScript, s)
		}
	case string:
		d.RebootScript = []string{v}
	default:
		return fmt.Errorf("reboot_script: a %T", v)
	}
	return nil
}

// labKey returns the public key of the host's key file, making a key in
// dir (and pointing the settings at it) when the host has none.
func labKey(settings *drivers.SSHSettings, dir string) (ssh.PublicKey, error) {
	if settings.KeyFile == "" {
		path := filepath.Join(dir, "id_ed25519")
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			if err := writeKey(path); err != nil {
				return nil, err
			}
		}
		settings.KeyFile = path
	}
	b, err := os.ReadFile(settings.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("ssh.key_file: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("ssh.key_file %s: %w", settings.KeyFile, err)
	}
	return signer.PublicKey(), nil
}

// writeKey writes a new ed25519 private key in OpenSSH format.
func writeKey(path string) error {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("making the lab's ssh key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "flinger lab")
	if err != nil {
		return fmt.Errorf("making the lab's ssh key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return fmt.Errorf("writing the lab's ssh key: %w", err)
	}
	return nil
}
