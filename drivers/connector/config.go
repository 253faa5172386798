package connector

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
)

// fileError reports a device or job file whose content cannot be used.
type fileError struct {
	path string
	err  error
}

func (e *fileError) Error() string { return e.path + ": " + e.err.Error() }

func (e *fileError) Unwrap() error { return e.err }

func badFile(path, format string, args ...any) error {
	return &fileError{path: path, err: fmt.Errorf(format, args...)}
}

// LoadDevice reads the device configuration at path: Testflinger's
// connector config (default.yaml), a YAML mapping of the device's keys
// (agent_name, device_ip, reboot_script, env, serial_host, serial_port,
// control_host, control_user and whatever the connector reads itself). typ
// is the connector type given on the command line; provision_type and
// job_queues, which only a Flinger host file needs, are neither required
// nor used.
//
// It is lenient where Testflinger is: every key is optional, unknown keys
// are kept in Raw for the driver, scalars are accepted where strings are
// expected, serial_port may be a numeric string, reboot_script a single
// string. A value that cannot mean what its key asks for is an error
// naming the file and the key.
func LoadDevice(path, typ string) (*drivers.DeviceConfig, error) {
	if path == "" {
		return nil, fmt.Errorf("device config: %w (use -c/--config)", errNoPath)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading device config: %w", err)
	}
	var raw map[string]any
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, badFile(path, "not a YAML mapping of device keys: %w", err)
	}
	if raw == nil {
		return nil, badFile(path, "empty: expected the device's keys (agent_name, device_ip, ...)")
	}
	return deviceFromMap(events.Data(raw), typ, path)
}

// deviceFromMap builds a DeviceConfig from a device's keys; source names
// the keys' origin in errors.
func deviceFromMap(d events.Data, typ, source string) (*drivers.DeviceConfig, error) {
	cfg := &drivers.DeviceConfig{Type: typ, Raw: d}
	var errs []error
	str := func(key string) string {
		s, err := scalarText(d[key])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
		}
		return s
	}
	cfg.Name = str("agent_name")
	if cfg.Name == "" {
		cfg.Name = str("name")
	}
	cfg.DeviceIP = str("device_ip")
	cfg.SerialHost = str("serial_host")
	cfg.ControlHost = str("control_host")
	cfg.ControlUser = str("control_user")

	if port := str("serial_port"); port != "" {
		n, err := strconv.Atoi(strings.TrimSpace(port))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("serial_port: %q is not a port number", port))
		case n < 0 || n > 65535:
			errs = append(errs, fmt.Errorf("serial_port: %d out of range (1-65535)", n))
		default:
			cfg.SerialPort = n
		}
	}

	if port := str("ssh_port"); port != "" {
		n, err := strconv.Atoi(strings.TrimSpace(port))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("ssh_port: %q is not a port number", port))
		case n < 1 || n > 65535:
			errs = append(errs, fmt.Errorf("ssh_port: %d out of range (1-65535)", n))
		default:
			cfg.SSHPort = n
		}
	}

	switch v := d["reboot_script"].(type) {
	case nil:
	case []any:
		for i, e := range v {
			s, err := scalarText(e)
			if err != nil {
				errs = append(errs, fmt.Errorf("reboot_script[%d]: %w", i, err))
				continue
			}
			cfg.RebootScript = append(cfg.RebootScript, s)
		}
	default:
		s, err := scalarText(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("reboot_script: must be a list of commands, got %s", events.TypeName(v)))
		} else if s != "" {
			cfg.RebootScript = []string{s}
		}
	}

	switch v := d["env"].(type) {
	case nil:
	case map[string]any:
		cfg.Env = make(map[string]string, len(v))
		names := make([]string, 0, len(v))
		for k := range v {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			s, err := scalarText(v[k])
			switch {
			case k == "" || strings.ContainsAny(k, "=\x00"):
				errs = append(errs, fmt.Errorf("env: %q is not a valid variable name", k))
			case err != nil:
				errs = append(errs, fmt.Errorf("env.%s: %w", k, err))
			case strings.ContainsRune(s, 0):
				errs = append(errs, fmt.Errorf("env.%s: must not contain a NUL byte", k))
			default:
				cfg.Env[k] = s
			}
		}
	default:
		errs = append(errs, fmt.Errorf("env: must be a mapping of names to values, got %s", events.TypeName(v)))
	}

	// The agent's limits; the connector does not enforce them, but a
	// driver may read them.
	cfg.GlobalTimeout, _ = d.Int("global_timeout", 0)
	cfg.OutputTimeout, _ = d.Int("output_timeout", 0)

	if len(errs) > 0 {
		return nil, &fileError{path: source, err: errors.Join(errs...)}
	}
	return cfg, nil
}

// scalarText returns a scalar as text: a string as it is, a number or a
// boolean as written in YAML, null as "". Lists and mappings are errors.
func scalarText(v any) (string, error) {
	switch t := v.(type) {
	case nil:
		return "", nil
	case string:
		return t, nil
	case bool:
		return strconv.FormatBool(t), nil
	case float64:
		return strconv.FormatFloat(t, 'f', -1, 64), nil
	}
	if n, ok := events.AsInt(v); ok {
		return strconv.Itoa(n), nil
	}
	return "", fmt.Errorf("must be a string, got %s", events.TypeName(v))
}
