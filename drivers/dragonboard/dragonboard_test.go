package dragonboard_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/dragonboard"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/events"
)

// offline is a device configuration whose board is never reached: the
// address is in TEST-NET-1.
func offline(extra events.Data) *drivers.DeviceConfig {
	raw := events.Data{
		"test_device": "/dev/mmcblk1", "snappy_writable_partition": "/dev/mmcblk1p2",
		"select_master_script": []any{"relay 1 on"}, "select_test_script": "relay 1 off",
	}
	for k, v := range extra {
		if v == nil {
			delete(raw, k)
		} else {
			raw[k] = v
		}
	}
	return &drivers.DeviceConfig{Name: "db-x", Type: dragonboard.Type, DeviceIP: "192.0.2.1", RebootScript: []string{"pdu cycle 3"}, Raw: raw}
}

func TestNewRejectsBadKeys(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  *drivers.DeviceConfig
		want string
	}{
		{"no test_device", offline(events.Data{"test_device": nil}), "test_device: required"},
		{"no writable partition", offline(events.Data{"snappy_writable_partition": nil}), "snappy_writable_partition: required"},
		{"no select_master_script", offline(events.Data{"select_master_script": nil}), "select_master_script: required"},
		{"select_test_script not a list", offline(events.Data{"select_test_script": 3}), "select_test_script: must be a list"},
		{"select script of numbers", offline(events.Data{"select_master_script": []any{1}}), "select_master_script[0]: must be a string"},
		{"empty select command", offline(events.Data{"select_test_script": []any{"a", ""}}), "select_test_script[1]: empty command"},
		{"relative test_device", offline(events.Data{"test_device": "mmcblk1"}), "test_device"},
		{"bad master_boot_timeout", offline(events.Data{"master_boot_timeout": -1}), "master_boot_timeout"},
		{"master_user not a string", offline(events.Data{"master_user": 1}), "master_user"},
		{"bad decompress", offline(events.Data{"decompress": "maybe"}), "decompress"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dragonboard.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New = %v, want an error with %q", err, tc.want)
			}
		})
	}
	noReset := offline(nil)
	noReset.RebootScript = nil
	if _, err := dragonboard.New(noReset); err == nil || !strings.Contains(err.Error(), "reboot_script: required") {
		t.Errorf("New without reboot_script = %v", err)
	}
	noIP := offline(nil)
	noIP.DeviceIP = ""
	if _, err := dragonboard.New(noIP); err == nil || !strings.Contains(err.Error(), "device_ip: required") {
		t.Errorf("New without device_ip = %v", err)
	}
	if _, err := dragonboard.New(offline(events.Data{"boot_timeout": "15m", "master_password": "secret"})); err != nil {
		t.Errorf("New with good keys: %v", err)
	}
}

func TestProvisionRefusesBadJobs(t *testing.T) {
	t.Parallel()
	d, err := dragonboard.New(offline(nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		pd   events.Data
		want string
	}{
		{"no url", events.Data{"delay": "100s"}, "provision_data.url is required"},
		{"local file", events.Data{"url": "file:///etc/shadow"}, "not an http or https URL"},
		{"relative", events.Data{"url": "images/x.img"}, "not an http or https URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run, _ := drivertest.NewRun(t, offline(nil), &events.Job{JobQueue: "db", ProvisionData: tc.pd})
			err := d.Provision(t.Context(), run)
			var pe *drivers.ProvisioningError
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Provision = %v, want a provisioning failure with %q", err, tc.want)
			}
		})
	}
}
