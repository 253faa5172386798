package drivers_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/firmware"
	"github.com/flingerlab/flinger/events"
)

// Base on its own is a driver: the default connector behaviour.
var _ drivers.Driver = drivers.Base{}

func TestBaseConformance(t *testing.T) {
	drivertest.Run(t, func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig) {
		cfg := *testDevice
		return drivers.Base{}, &cfg
	})
}

// TestBaseFirmwareUpdateRefused covers what FirmwareUpdate decides before
// contacting the device (testDevice's address does not answer); the
// update itself is tested against simulated devices in hooks_test.go.
func TestBaseFirmwareUpdateRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		data    events.Data
		wantErr string
		output  []string
	}{
		{"version not latest", events.Data{"version": "1.2.3"}, `firmware_update_data.version "1.2.3" is not supported: LVFS devices can only be updated to "latest"`,
			[]string{"Firmware update failed: firmware_update_data.version"}},
		{"no version", events.Data{"ignore_failure": false}, "firmware_update_data.version is required", nil},
		{"version not a string", events.Data{"version": 2}, "firmware_update_data.version: must be a string", nil},
		{"ignore_failure", events.Data{"version": "1.2.3", "ignore_failure": true}, "", []string{"Firmware update failed", "ignore_failure: true; continuing"}},
		{"ignore_failure not a boolean", events.Data{"ignore_failure": "yes"}, "firmware_update_data: ignore_failure: must be true or false, got a string", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			run, out := drivertest.NewRun(t, testDevice, &events.Job{JobQueue: "q", FirmwareUpdateData: tc.data})
			err := drivers.Base{}.FirmwareUpdate(t.Context(), run)
			if tc.wantErr == "" {
				if err != nil {
					t.Errorf("FirmwareUpdate: %v", err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("FirmwareUpdate = %v, want an error containing %q", err, tc.wantErr)
			} else if drivers.ExitCode(err) != drivers.ExitFailed {
				t.Errorf("FirmwareUpdate = %v: exit code %d, want 1", err, drivers.ExitCode(err))
			}
			var ve *firmware.VersionError
			if strings.Contains(tc.wantErr, "version \"") && !errors.As(err, &ve) {
				t.Errorf("FirmwareUpdate = %v (%T), want a *firmware.VersionError", err, err)
			}
			for _, s := range tc.output {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q:\n%s", s, out)
				}
			}
		})
	}
}

func TestBaseAllocate(t *testing.T) {
	run, _ := drivertest.NewRun(t, testDevice, &events.Job{JobQueue: "q"})
	info, err := drivers.Base{}.Allocate(t.Context(), run)
	if want := map[string]any{"device_ip": "192.0.2.7", "agent_name": "dev-1"}; err != nil || !reflect.DeepEqual(info, want) {
		t.Errorf("Allocate = %v, %v; want %v", info, err, want)
	}
	run.Device = nil
	if _, err := (drivers.Base{}).Allocate(t.Context(), run); err == nil {
		t.Error("Allocate without a device configuration succeeded")
	}
}

func TestBaseReserve(t *testing.T) {
	serial := *testDevice
	serial.SerialHost, serial.SerialPort = "console.lab", 7001
	noIP := *testDevice
	noIP.DeviceIP = ""
	for _, tc := range []struct {
		name   string
		dev    *drivers.DeviceConfig
		job    *events.Job
		want   []string
		absent []string
	}{
		{"defaults", testDevice, &events.Job{JobID: "j-1", ReserveData: &events.ReserveData{}},
			[]string{"*** TESTFLINGER SYSTEM RESERVED ***", "You can now connect to ubuntu@192.0.2.7", "ssh ubuntu@192.0.2.7", "Reservation expires at: [",
				"Reservation will automatically timeout in 3600 seconds", "To end the reservation sooner use: flinger cancel j-1"},
			[]string{"Serial access", "SSH keys"}},
		{"user, timeout, serial", &serial, &events.Job{JobID: "j-2", TestData: &events.TestData{TestUsername: "admin"},
			ReserveData: &events.ReserveData{Timeout: 7200}},
			[]string{"ssh admin@192.0.2.7", "Serial access is available via: telnet console.lab 7001",
				"timeout in 7200 seconds", "flinger cancel j-2"}, nil},
		{"no job id, no device_ip", &noIP, &events.Job{ReserveData: &events.ReserveData{}},
			[]string{"ubuntu@<device_ip not configured>", "flinger cancel <job_id>"}, nil},
		{"control characters are quoted", testDevice, &events.Job{JobID: "j\nFAKE LINE", TestData: &events.TestData{TestUsername: "u\n*** forged ***"}, ReserveData: &events.ReserveData{}},
			[]string{`ssh "u\n*** forged ***"@192.0.2.7`, `flinger cancel "j\nFAKE LINE"`}, []string{"\nFAKE LINE", "\n*** forged"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run, out := drivertest.NewRun(t, tc.dev, tc.job)
			if err := (drivers.Base{}).Reserve(t.Context(), run); err != nil {
				t.Fatalf("Reserve: %v", err)
			}
			for _, s := range tc.want {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q:\n%s", s, out)
				}
			}
			for _, s := range tc.absent {
				if strings.Contains(out.String(), s) {
					t.Errorf("output has %q:\n%s", s, out)
				}
			}
		})
	}
}

func TestBaseCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	run, out := drivertest.NewRun(t, testDevice, &events.Job{JobQueue: "q", ReserveData: &events.ReserveData{}})
	for _, p := range drivertest.Phases {
		if err := p.Call(ctx, drivers.Base{}, run); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context = %v", p.Name, err)
		}
	}
	if out.String() != "" {
		t.Errorf("cancelled phases wrote output:\n%s", out)
	}
}
