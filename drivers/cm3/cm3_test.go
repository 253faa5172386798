package cm3_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/cm3"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/events"
)

// offline is a device configuration whose hosts are never reached: the
// address is in TEST-NET-1.
func offline(raw events.Data) *drivers.DeviceConfig {
	return &drivers.DeviceConfig{
		Name: "cm3-x", Type: cm3.Type, DeviceIP: "192.0.2.1", ControlHost: "192.0.2.2",
		RebootScript: []string{"true"}, Raw: raw,
	}
}

func TestNewRejectsBadKeys(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  func() *drivers.DeviceConfig
		want string
	}{
		{"no control_host", func() *drivers.DeviceConfig { c := offline(nil); c.ControlHost = ""; return c }, "control_host: required"},
		{"no reboot_script", func() *drivers.DeviceConfig { c := offline(nil); c.RebootScript = nil; return c }, "reboot_script: required"},
		{"empty reboot_script command", func() *drivers.DeviceConfig { c := offline(nil); c.RebootScript = []string{"pdu on", " "}; return c }, "reboot_script[1]: empty command"},
		{"zero boot_timeout", func() *drivers.DeviceConfig { return offline(events.Data{"boot_timeout": 0}) }, "boot_timeout: 0s out of range"},
		{"bad usb_timeout", func() *drivers.DeviceConfig { return offline(events.Data{"usb_timeout": "soon"}) }, "usb_timeout"},
		{"huge write_timeout", func() *drivers.DeviceConfig { return offline(events.Data{"write_timeout": "7h"}) }, "write_timeout: 7h0m0s out of range"},
		{"relative test_device", func() *drivers.DeviceConfig { return offline(events.Data{"test_device": "sda"}) }, "test_device"},
		{"test_device with a space", func() *drivers.DeviceConfig { return offline(events.Data{"test_device": "/dev/sda /etc"}) }, "test_device"},
		{"root mount_point", func() *drivers.DeviceConfig { return offline(events.Data{"mount_point": "/"}) }, "mount_point: must not be /"},
		{"bad decompress", func() *drivers.DeviceConfig { return offline(events.Data{"decompress": "fast"}) }, "decompress"},
		{"control_port out of range", func() *drivers.DeviceConfig { return offline(events.Data{"control_port": 70000}) }, "control_port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cm3.New(tc.cfg())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New = %v, want an error with %q", err, tc.want)
			}
		})
	}
	if _, err := cm3.New(offline(events.Data{"boot_timeout": "90s", "control_timeout": 30, "decompress": "remote"})); err != nil {
		t.Errorf("New with good keys: %v", err)
	}
}

func TestProvisionRefusesBadJobs(t *testing.T) {
	t.Parallel()
	d, err := cm3.New(offline(nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		pd   events.Data
		want string
	}{
		{"no provision_data", nil, "provision_data.url is required"},
		{"empty url", events.Data{"url": ""}, "provision_data.url is required"},
		{"url not a string", events.Data{"url": 5}, "provision_data.url: must be a string"},
		{"local file", events.Data{"url": "file:///etc/shadow"}, "not an http or https URL"},
		{"ftp", events.Data{"url": "ftp://example.com/x.img"}, "not an http or https URL"},
		{"no host", events.Data{"url": "http:///x.img"}, "not an http or https URL"},
		{"control characters", events.Data{"url": "http://example.com/\nx"}, "not a valid URL"},
		{"sha256 not a string", events.Data{"url": "http://example.com/x.img", "sha256": 1}, "provision_data.sha256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run, _ := drivertest.NewRun(t, offline(nil), &events.Job{JobQueue: "cm3", ProvisionData: tc.pd})
			err := d.Provision(t.Context(), run)
			var pe *drivers.ProvisioningError
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Provision = %v, want a provisioning failure with %q", err, tc.want)
			}
		})
	}
}
