package drivers_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/drivers"
)

// TestHealthChecks checks which health check each device gets from the
// host file's health_checks (by type, by name) and its own health_check
// key, and that bad entries and bad job files are clear errors naming
// the file.
func TestHealthChecks(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	byType := write("by-type.yaml", "test_data: {test_cmds: 'true'}\n")
	byName := write("by-name.yaml", "job_queue: ignored\nprovision_data: {delay: 1}\n")
	own := write("own.json", `{"test_data": {"test_cmds": ["echo ok"]}}`)
	typo := write("typo.yaml", "test_data: {test_cmd: 'true'}\n")
	notYAML := write("broken.yaml", "test_data: [unclosed\n")

	const devices = `
devices:
  - {agent_name: a, provision_type: fake, job_queues: [qa]}
  - {agent_name: b, provision_type: fake_connector, job_queues: [qb]}
  - {agent_name: c, provision_type: fake_connector, job_queues: [qc], health_check: own.json}
  - {agent_name: d, provision_type: fake_connector, job_queues: [qd]}
`
	tests := []struct {
		name    string
		file    string
		want    map[string]string // device → health-check file ("": none)
		wantErr []string
	}{
		{
			name: "by type, by name and the device's own",
			file: "health_checks:\n  fake: " + byType + "\n  b: by-name.yaml\n" + devices,
			want: map[string]string{"a": byType, "b": byName, "c": own, "d": byType},
		},
		{
			name: "none",
			file: devices,
			want: map[string]string{"a": "", "b": "", "c": own, "d": ""},
		},
		{
			name:    "unknown key",
			file:    "health_checks:\n  muxpy: " + byType + "\n" + devices,
			wantErr: []string{"host.yaml: health_checks.muxpy: neither a device type", "nor a device of this file"},
		},
		{
			name:    "job file with a typo",
			file:    "health_checks:\n  fake_connector: typo.yaml\n" + devices,
			wantErr: []string{"health_checks.fake_connector: health-check job " + typo, "test_cmd"},
		},
		{
			name:    "job file that is not YAML",
			file:    "health_checks:\n  d: broken.yaml\n" + devices,
			wantErr: []string{"health_checks.d: health-check job " + notYAML},
		},
		{
			name:    "missing job file",
			file:    "health_checks:\n  a: missing.yaml\n" + devices,
			wantErr: []string{"health_checks.a: health-check job: open " + filepath.Join(dir, "missing.yaml")},
		},
		{
			name:    "not a mapping",
			file:    "health_checks: [" + byType + "]\n" + devices,
			wantErr: []string{"health_checks: must be a mapping"},
		},
		{
			name: "device key not a string",
			file: `
devices:
  - {agent_name: a, provision_type: fake, job_queues: [qa], health_check: [x]}
`,
			wantErr: []string{"devices[0] (a): health_check: must be a string"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hc, err := drivers.ParseHost([]byte("host: h\n"+tc.file), filepath.Join(dir, "host.yaml"))
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("no error, want %q", tc.wantErr)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, dc := range hc.Devices {
				want := tc.want[dc.Name]
				if dc.HealthCheck != want {
					t.Errorf("%s: health check %q, want %q", dc.Name, dc.HealthCheck, want)
				}
				if (dc.HealthCheckJob != nil) != (want != "") {
					t.Errorf("%s: job %v for file %q", dc.Name, dc.HealthCheckJob, want)
				}
			}
			if b := hc.Devices[1]; b.HealthCheckJob != nil && b.HealthCheckJob.ProvisionData == nil {
				t.Errorf("b: the job's provision_data was lost: %+v", b.HealthCheckJob)
			}
		})
	}
}
