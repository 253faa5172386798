package drivers

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"

	"gopkg.in/yaml.v3"

	"github.com/flingerlab/flinger/events"
)

// DeviceConfig is one device's configuration: Testflinger's device config
// keys (the connector's default.yaml) plus the two agent keys Flinger needs
// (agent_name and job_queues). Keys a connector reads on its own stay in
// Raw.
type DeviceConfig struct {
	// Name is agent_name (also accepted: name). Required, unique in a host file.
	Name string
	// Type is provision_type, the connector type (e.g. fake_connector,
	// muxpi), always the registry's canonical name. Required.
	Type string
	// Queues is job_queues: the queues the device serves. At least one; a
	// single string is one queue.
	Queues []string
	// DeviceIP is device_ip: the address tests and reservations reach the device at.
	DeviceIP string
	// Env is env: variables exported to the test phase's commands.
	Env map[string]string
	// RebootScript is reboot_script: the commands that hard-reset the
	// device. A single string is one command.
	RebootScript []string
	// SerialHost is serial_host: the host serving the device's serial console.
	SerialHost string
	// SerialPort is serial_port: the TCP port of that console (0: none).
	SerialPort int
	// ControlHost is control_host: the host that provisions the device.
	ControlHost string
	// ControlUser is control_user: the SSH user on the control host.
	ControlUser string
	// GlobalTimeout is global_timeout: the device's maximum for a job's
	// global timeout, in seconds, as Testflinger's agent config has it (0: default).
	GlobalTimeout int
	// OutputTimeout is output_timeout: the device's maximum for a job's
	// output timeout, in seconds (0: default).
	OutputTimeout int
	// SSHPort is ssh_port: the port of the device's SSH server (0: 22).
	SSHPort int
	// HealthCheck is the job file of the device's health check: its own
	// health_check key, else the host file's health_checks entry for its
	// name, else the one for its type ("": the device has none). A worker
	// runs it before a device whose health is unknown or bad takes jobs
	// again.
	HealthCheck string
	// HealthCheckJob is HealthCheck's job, parsed and validated (nil when
	// the device has no health check). Its job_id and job_queue are set
	// when it runs.
	HealthCheckJob *events.Job
	// SSH are the host's SSH settings (the host file's ssh section),
	// shared by its devices; nil for a configuration that did not come
	// from a host file (SSHSettings then gives the defaults).
	SSH *SSHSettings
	// Raw holds every key of the device's entry as given, so that each
	// driver reads its own keys with the events.Data accessors.
	Raw events.Data
}

// HostConfig is a host file: the devices one worker process drives. The
// single-machine lab file has the same shape.
type HostConfig struct {
	// Host is host: the lab host's name (default: os.Hostname).
	Host string
	// RunDir is run_dir: where job run directories go ("": the caller decides).
	RunDir string
	// SSH is ssh: how the worker reaches its devices over SSH (host_keys,
	// key_file, key_servers). Never nil after ParseHost; every device's
	// DeviceConfig.SSH points at it.
	SSH *SSHSettings
	// ImageCache is image_cache: the host's shared image cache.
	ImageCache ImageCacheConfig
	// SecretsFile is secrets_file: a YAML file mapping secret paths to
	// values, from which the test_data.secrets of jobs are resolved ("":
	// the host resolves no secrets). Only the worker should be able to
	// read it.
	SecretsFile string
	// SecretsKV is secrets_kv: true resolves the test_data.secrets of jobs
	// from the lab's secrets bucket on NATS (flinger secret set), which
	// only workers should be allowed to read. Not with secrets_file.
	SecretsKV bool
	// HealthChecks is health_checks: a device type (provision_type) or a
	// device name mapped to the job file of its health check. Relative
	// paths are taken from the host file's directory; every file must
	// hold a valid job (job_queue may be left out: it is set to the
	// device's first queue when the check runs). A device's own
	// health_check key wins over an entry for its name, which wins over
	// one for its type.
	HealthChecks map[string]string
	// Devices is devices: at least one device.
	Devices []*DeviceConfig
}

// LoadHost reads and validates the host file at path (see ParseHost).
func LoadHost(path string) (*HostConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading host file: %w", err)
	}
	return ParseHost(data, path)
}

// hostKeys are the top-level keys of a host file. Other top-level keys are
// ignored, so that a single-machine lab file can carry other sections.
var hostKeys = []string{"host", "run_dir", "ssh", "image_cache", "secrets_file", "secrets_kv", "health_checks", "devices"}

// DefaultImageCacheSize is the image cache's size when image_cache.size
// is not given.
const DefaultImageCacheSize = 20 << 30

// ImageCacheConfig is a host file's image_cache section: where the host
// keeps the provisioning images its devices share, and how much.
type ImageCacheConfig struct {
	// Dir is image_cache.dir ("": <run_dir>/image-cache, or image-cache in
	// the state directory).
	Dir string
	// Size is image_cache.size in bytes: a number, or with a K, M, G or T
	// suffix (powers of 1024, an optional iB or B after it). Default
	// DefaultImageCacheSize.
	Size int64
	// Disabled is image_cache.enabled: false: every device downloads its
	// image, nothing is kept.
	Disabled bool
}

// ParseByteSize reads a size: a whole number of bytes, or one with a K,
// M, G or T suffix (powers of 1024), optionally followed by iB or B
// ("20G", "512MiB", "1TB").
func ParseByteSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	u := strings.ToUpper(t)
	u = strings.TrimSuffix(strings.TrimSuffix(u, "B"), "I")
	mult := int64(1)
	if n := len(u); n > 0 {
		switch u[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			u = u[:n-1]
		}
	}
	v, err := strconv.ParseInt(strings.TrimSpace(u), 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (a number of bytes, or with K, M, G or T)", s)
	}
	return v * mult, nil
}

// parseImageCache reads the image_cache section.
func parseImageCache(n *yaml.Node, runDir string) (ImageCacheConfig, []error) {
	c := ImageCacheConfig{Size: DefaultImageCacheSize}
	if runDir != "" {
		c.Dir = filepath.Join(runDir, "image-cache")
	} else {
		c.Dir = filepath.Join(StateDir(), "image-cache")
	}
	if n == nil || n.Tag == "!!null" {
		return c, nil
	}
	if n.Kind != yaml.MappingNode {
		return c, []error{fmt.Errorf("image_cache: must be a mapping with keys dir, size, enabled, got %s", nodeKind(n))}
	}
	kv, err := pairs(n)
	if err != nil {
		return c, []error{fmt.Errorf("image_cache: %w", err)}
	}
	var errs []error
	for _, k := range sortedKeys(kv) {
		v := resolve(kv[k])
		if v.Kind != yaml.ScalarNode {
			errs = append(errs, fmt.Errorf("image_cache.%s: must be a scalar, got %s", k, nodeKind(v)))
			continue
		}
		text := v.Value
		var err error
		switch k {
		case "dir":
			if text == "" {
				errs = append(errs, errors.New("image_cache.dir: empty"))
			}
			c.Dir = text
		case "size":
			if c.Size, err = ParseByteSize(text); err != nil {
				errs = append(errs, fmt.Errorf("image_cache.size: %w", err))
			}
		case "enabled":
			b, err := strconv.ParseBool(text)
			if err != nil {
				errs = append(errs, fmt.Errorf("image_cache.enabled: %q is not true or false", text))
			}
			c.Disabled = !b
		default:
			errs = append(errs, fmt.Errorf("image_cache.%s: unknown key (known: dir, size, enabled)", k))
		}
	}
	return c, errs
}

// ParseHost parses and validates a host file given as YAML; source names
// it in errors. Every problem found is reported, each naming the file, the
// device (by index and agent_name) and the key, for example
// "lab.yaml: devices[2] (rpi-3): job_queues: required". provision_type is
// checked against the registry, so the driver packages (drivers/all) must
// be imported first.
func ParseHost(data []byte, source string) (*HostConfig, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, fmt.Errorf("%s: devices: required (the file is empty)", source)
	}
	root := resolve(doc.Content[0])
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s: must be a mapping with keys %s, got %s", source, strings.Join(hostKeys, ", "), nodeKind(root))
	}
	top, err := pairs(root)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}

	var errs []error
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{source}, args...)...))
	}
	hc := &HostConfig{}
	if n, ok := top["host"]; ok {
		if hc.Host, err = scalarString(n); err != nil {
			fail("host: %v", err)
		}
	}
	if n, ok := top["secrets_file"]; ok {
		if hc.SecretsFile, err = scalarString(n); err != nil {
			fail("secrets_file: %v", err)
		}
	}
	if n, ok := top["secrets_kv"]; ok {
		if n.Kind != yaml.ScalarNode || n.Decode(&hc.SecretsKV) != nil {
			fail("secrets_kv: must be true or false")
		} else if hc.SecretsKV && hc.SecretsFile != "" {
			fail("secrets_kv: give secrets_file or secrets_kv, not both")
		}
	}
	if n, ok := top["run_dir"]; ok {
		if hc.RunDir, err = scalarString(n); err != nil {
			fail("run_dir: %v", err)
		}
	}
	var sshErrs []error
	hc.SSH, sshErrs = parseSSH(top["ssh"], hc.RunDir)
	for _, e := range sshErrs {
		fail("%v", e)
	}
	var cacheErrs []error
	hc.ImageCache, cacheErrs = parseImageCache(top["image_cache"], hc.RunDir)
	for _, e := range cacheErrs {
		fail("%v", e)
	}
	if hc.Host == "" {
		if hc.Host, err = os.Hostname(); err != nil {
			fail("host: not given and the hostname is unknown: %v", err)
		}
	}

	devs, ok := top["devices"]
	switch {
	case !ok || devs.Tag == "!!null":
		fail("devices: required (a list of at least one device)")
	case devs.Kind != yaml.SequenceNode:
		fail("devices: must be a list of devices, got %s", nodeKind(devs))
	case len(devs.Content) == 0:
		fail("devices: required (a list of at least one device)")
	}
	if devs != nil && devs.Kind == yaml.SequenceNode {
		seen := map[string]int{}
		for i, n := range devs.Content {
			dc, derrs := parseDevice(resolve(n))
			where := fmt.Sprintf("devices[%d]", i)
			if dc.Name != "" {
				where += " (" + dc.Name + ")"
			}
			for _, e := range derrs {
				fail("%s: %v", where, e)
			}
			if dc.Name != "" {
				if j, dup := seen[dc.Name]; dup {
					fail("%s: agent_name: duplicate of devices[%d]", where, j)
				} else {
					seen[dc.Name] = i
				}
			}
			dc.SSH = hc.SSH
			hc.Devices = append(hc.Devices, dc)
		}
	}
	for _, e := range setHealthChecks(hc, top["health_checks"], filepath.Dir(source)) {
		fail("%v", e)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return hc, nil
}

// setHealthChecks reads the health_checks section (n, nil when absent) and
// each device's health_check key, loads every job file named (once each),
// and gives each device the health check that applies to it. Relative
// paths are taken from dir.
func setHealthChecks(hc *HostConfig, n *yaml.Node, dir string) []error {
	var errs []error
	path := func(p string) string {
		if p != "" && !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		return p
	}
	names := map[string]bool{}
	for _, dc := range hc.Devices {
		names[dc.Name] = true
	}
	if n != nil && n.Tag != "!!null" {
		if n.Kind != yaml.MappingNode {
			return []error{fmt.Errorf("health_checks: must be a mapping of device types or names to job files, got %s", nodeKind(n))}
		}
		kv, err := pairs(n)
		if err != nil {
			return []error{fmt.Errorf("health_checks: %w", err)}
		}
		hc.HealthChecks = map[string]string{}
		for _, k := range sortedKeys(kv) {
			file, err := scalarString(kv[k])
			switch {
			case err != nil:
				errs = append(errs, fmt.Errorf("health_checks.%s: %w", k, err))
				continue
			case file == "":
				errs = append(errs, fmt.Errorf("health_checks.%s: empty (give the path of a job file)", k))
				continue
			}
			key := k
			if canon, known := Canonical(k); known {
				key = canon
			} else if !names[k] {
				errs = append(errs, fmt.Errorf("health_checks.%s: neither a device type (known: %s) nor a device of this file", k, knownTypes()))
				continue
			}
			hc.HealthChecks[key] = path(file)
		}
	}

	jobs := map[string]*events.Job{}
	bad := map[string]bool{}
	load := func(file, where string) *events.Job {
		if job, ok := jobs[file]; ok || bad[file] {
			return job
		}
		job, err := LoadHealthCheck(file)
		if err != nil {
			bad[file] = true
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			return nil
		}
		jobs[file] = job
		return job
	}
	for _, k := range sortedKeys(hc.HealthChecks) {
		load(hc.HealthChecks[k], "health_checks."+k)
	}
	for i, dc := range hc.Devices {
		where := fmt.Sprintf("devices[%d]", i)
		if dc.Name != "" {
			where += " (" + dc.Name + ")"
		}
		file, err := dc.Raw.String("health_check", "")
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		case file != "":
			dc.HealthCheck = path(file)
			dc.HealthCheckJob = load(dc.HealthCheck, where+": health_check")
			continue
		}
		for _, key := range []string{dc.Name, dc.Type} {
			if file, ok := hc.HealthChecks[key]; ok && key != "" {
				dc.HealthCheck, dc.HealthCheckJob = file, jobs[file]
				break
			}
		}
	}
	return errs
}

// LoadHealthCheck reads and validates a health-check job file: a job as
// flinger submit takes it (YAML or JSON), whose job_queue may be left out
// since the check runs on the device's first queue. Errors name the file.
func LoadHealthCheck(path string) (*events.Job, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("health-check job: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("health-check job %s: %w", path, err)
	}
	if len(doc.Content) == 1 {
		if root := resolve(doc.Content[0]); root.Kind == yaml.MappingNode {
			if kv, err := pairs(root); err == nil && kv["job_queue"] == nil {
				root.Content = append(root.Content,
					&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "job_queue"},
					&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "health-check"})
			}
		}
		if data, err = yaml.Marshal(&doc); err != nil {
			return nil, fmt.Errorf("health-check job %s: %w", path, err)
		}
	}
	job, err := events.ParseJob(data, events.FormatYAML, 0)
	if err != nil {
		return nil, fmt.Errorf("health-check job %s: %w", path, err)
	}
	return job, nil
}

// parseDevice reads one device entry. It returns what it could read along
// with every problem found, each prefixed with the key it concerns.
func parseDevice(n *yaml.Node) (*DeviceConfig, []error) {
	dc := &DeviceConfig{}
	if n.Kind != yaml.MappingNode {
		return dc, []error{fmt.Errorf("must be a mapping, got %s", nodeKind(n))}
	}
	keys, err := pairs(n)
	if err != nil {
		return dc, []error{err}
	}
	var raw map[string]any
	if err := n.Decode(&raw); err != nil {
		return dc, []error{err}
	}
	dc.Raw = events.Data(raw)
	d := dc.Raw

	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	// str reads a string key; ok is false when it has another type.
	str := func(key string) (string, bool) {
		s, err := d.String(key, "")
		add(err)
		return s, err == nil
	}

	// agent_name, or name.
	name, okName := str("agent_name")
	alt, okAlt := str("name")
	switch {
	case !okName || !okAlt:
	case name == "" && alt == "":
		add(errors.New("agent_name: required"))
	case name != "" && alt != "" && name != alt:
		add(fmt.Errorf("name: %q differs from agent_name %q (give one of them)", alt, name))
	case name == "":
		name = alt
	}
	if name != "" {
		if err := checkName(name); err != nil {
			add(fmt.Errorf("agent_name: %w", err))
		} else {
			dc.Name = name
		}
	}

	// provision_type, checked against the registry.
	if typ, ok := str("provision_type"); ok {
		if typ == "" {
			add(errors.New("provision_type: required"))
		} else if canon, known := Canonical(typ); known {
			dc.Type = canon
		} else {
			add(fmt.Errorf("provision_type: unknown type %q (known: %s)", typ, knownTypes()))
		}
	}

	// job_queues: a string or a list of strings.
	queues, err := stringList(d, "job_queues")
	add(err)
	if err == nil && len(queues) == 0 {
		add(errors.New("job_queues: required (at least one queue)"))
	}
	for i, q := range queues {
		if err := checkQueue(q); err != nil {
			add(fmt.Errorf("job_queues[%d]: %w", i, err))
		} else if !slices.Contains(dc.Queues, q) {
			dc.Queues = append(dc.Queues, q)
		}
	}

	dc.DeviceIP, _ = str("device_ip")
	dc.SerialHost, _ = str("serial_host")
	dc.ControlHost, _ = str("control_host")
	dc.ControlUser, _ = str("control_user")

	if dc.RebootScript, err = stringList(d, "reboot_script"); err != nil {
		add(err)
	}

	if dc.SerialPort, err = d.Int("serial_port", 0); err != nil {
		add(err)
	} else if dc.SerialPort < 0 || dc.SerialPort > 65535 {
		add(fmt.Errorf("serial_port: %d out of range (1-65535)", dc.SerialPort))
	}
	if dc.SSHPort, err = d.Int("ssh_port", 0); err != nil {
		add(err)
	} else if dc.SSHPort < 0 || dc.SSHPort > 65535 {
		add(fmt.Errorf("ssh_port: %d out of range (1-65535)", dc.SSHPort))
		dc.SSHPort = 0
	}
	if dc.SerialPort != 0 && dc.SerialHost == "" {
		add(errors.New("serial_port: given without serial_host"))
	}

	for _, t := range []struct {
		key string
		dst *int
	}{{"global_timeout", &dc.GlobalTimeout}, {"output_timeout", &dc.OutputTimeout}} {
		v, err := d.Int(t.key, 0)
		switch {
		case err != nil:
			add(err)
		case v < 0:
			add(fmt.Errorf("%s: must not be negative, got %d", t.key, v))
		default:
			*t.dst = v
		}
	}

	if en, ok := keys["env"]; ok {
		env, eerrs := parseEnv(en)
		errs = append(errs, eerrs...)
		dc.Env = env
	}
	return dc, errs
}

// parseEnv reads the env mapping. Values must be scalars; numbers and
// booleans become their text as written (booleans as true/false), null
// becomes the empty string.
func parseEnv(n *yaml.Node) (map[string]string, []error) {
	if n.Tag == "!!null" {
		return nil, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, []error{fmt.Errorf("env: must be a mapping of names to values, got %s", nodeKind(n))}
	}
	kv, err := pairs(n)
	if err != nil {
		return nil, []error{fmt.Errorf("env: %w", err)}
	}
	var errs []error
	env := make(map[string]string, len(kv))
	for _, k := range sortedKeys(kv) {
		v := kv[k]
		if k == "" || strings.ContainsAny(k, "=\x00") {
			errs = append(errs, fmt.Errorf("env: %q: not a valid variable name", k))
			continue
		}
		if v.Kind != yaml.ScalarNode {
			errs = append(errs, fmt.Errorf("env.%s: must be a scalar (string, number or boolean), got %s", k, nodeKind(v)))
			continue
		}
		s := v.Value
		switch v.Tag {
		case "!!null":
			s = ""
		case "!!bool":
			var b bool
			if err := v.Decode(&b); err == nil {
				s = strconv.FormatBool(b)
			}
		}
		if strings.ContainsRune(s, 0) {
			errs = append(errs, fmt.Errorf("env.%s: must not contain a NUL byte", k))
			continue
		}
		env[k] = s
	}
	return env, errs
}

// stringList reads key as a list of strings, or a single string as a list
// of one. An absent key or null gives nil.
func stringList(d events.Data, key string) ([]string, error) {
	switch v := d[key].(type) {
	case nil:
		return nil, nil
	case string:
		if v == "" {
			return nil, nil
		}
		return []string{v}, nil
	case []any:
		out := make([]string, 0, len(v))
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("%s[%d]: must be a string, got %s", key, i, events.TypeName(e))
			}
			out = append(out, s)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("%s: must be a string or a list of strings, got %s", key, events.TypeName(v))
	}
}

// checkName rejects agent names that cannot name a device safely (they
// end up in file names and log lines).
func checkName(s string) error {
	if strings.ContainsRune(s, '/') {
		return fmt.Errorf("%q must not contain '/'", s)
	}
	if strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return fmt.Errorf("%q must not contain spaces or control characters", s)
	}
	return nil
}

// checkQueue rejects empty queue names and names with spaces or control characters.
func checkQueue(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	if strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return fmt.Errorf("%q must not contain spaces or control characters", s)
	}
	return nil
}

// resolve follows YAML aliases.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// pairs returns a mapping node's values by key, rejecting duplicate keys
// and keys that are not scalars. Merge keys (<<: *anchor) are honoured:
// keys given in the mapping itself win over merged ones.
func pairs(n *yaml.Node) (map[string]*yaml.Node, error) {
	m := make(map[string]*yaml.Node, len(n.Content)/2)
	var merged []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("line %d: a key must be a scalar, got %s", k.Line, nodeKind(k))
		}
		if k.Tag == "!!merge" {
			switch v.Kind {
			case yaml.MappingNode:
				merged = append(merged, v)
			case yaml.SequenceNode:
				for _, e := range v.Content {
					merged = append(merged, resolve(e))
				}
			default:
				return nil, fmt.Errorf("line %d: << must merge a mapping, got %s", k.Line, nodeKind(v))
			}
			continue
		}
		if _, dup := m[k.Value]; dup {
			return nil, fmt.Errorf("%s: given twice (line %d)", k.Value, k.Line)
		}
		m[k.Value] = v
	}
	for _, mn := range merged {
		if mn.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("line %d: << must merge a mapping, got %s", mn.Line, nodeKind(mn))
		}
		mp, err := pairs(mn)
		if err != nil {
			return nil, err
		}
		for k, v := range mp {
			if _, ok := m[k]; !ok {
				m[k] = v
			}
		}
	}
	return m, nil
}

// scalarString reads a string scalar.
func scalarString(n *yaml.Node) (string, error) {
	if n.Tag == "!!null" {
		return "", nil
	}
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		return "", fmt.Errorf("must be a string, got %s", nodeKind(n))
	}
	return n.Value, nil
}

// nodeKind names a node's kind for error messages, in the words of events.TypeName.
func nodeKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "null"
		case "!!str":
			return "a string"
		case "!!bool":
			return "a boolean"
		case "!!int":
			return "an integer"
		case "!!float":
			return "a number"
		}
		return "a scalar (" + n.Tag + ")"
	}
	return "nothing"
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Environ returns base followed by the device's env (sorted by name),
// AGENT_NAME and REBOOT_SCRIPT (reboot_script joined with ";"), as
// Testflinger's DefaultDevice builds the test phase's environment. Later
// entries win: each name appears once, at the place it first appeared,
// with the last value given for it.
func (c *DeviceConfig) Environ(base []string) []string {
	all := slices.Clone(base)
	for _, k := range sortedKeys(c.Env) {
		all = append(all, k+"="+c.Env[k])
	}
	all = append(all, "AGENT_NAME="+c.Name, "REBOOT_SCRIPT="+strings.Join(c.RebootScript, ";"))

	out := make([]string, 0, len(all))
	index := make(map[string]int, len(all))
	for _, kv := range all {
		name, _, _ := strings.Cut(kv, "=")
		if i, ok := index[name]; ok {
			out[i] = kv
			continue
		}
		index[name] = len(out)
		out = append(out, kv)
	}
	return out
}

// DeviceInfo returns the device information Testflinger's connectors write
// to device-info.json: {"device_info": {"device_ip": ..., "agent_name": ...}},
// leaving out a field that is not configured, as Testflinger does.
func (c *DeviceConfig) DeviceInfo() map[string]any {
	info := map[string]any{}
	if c.DeviceIP != "" {
		info["device_ip"] = c.DeviceIP
	}
	if c.Name != "" {
		info["agent_name"] = c.Name
	}
	return map[string]any{"device_info": info}
}
