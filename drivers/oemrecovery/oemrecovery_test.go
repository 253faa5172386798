package oemrecovery_test

import (
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/oemrecovery"
	"github.com/flingerlab/flinger/events"
)

func TestNew(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		raw  events.Data
		err  string
	}{
		{"recovery_cmds list", events.Data{"recovery_cmds": []any{"sudo dell-restore-system -y"}}, ""},
		{"recovery_cmds string", events.Data{"recovery_cmds": "sudo dell-restore-system -y"}, ""},
		{"no recovery_cmds", events.Data{}, "recovery_cmds: required"},
		{"empty command", events.Data{"recovery_cmds": []any{""}}, "recovery_cmds[0]"},
		{"bad timeout", events.Data{"recovery_cmds": "x", "recovery_timeout": "ever"}, "recovery_timeout"},
		{"bad poll interval", events.Data{"recovery_cmds": "x", "recovery_poll_interval": -1}, "recovery_poll_interval"},
		{"bad boot_timeout", events.Data{"recovery_cmds": "x", "boot_timeout": "13h"}, "boot_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := oemrecovery.New(&drivers.DeviceConfig{Name: "d", Type: oemrecovery.Type, Raw: tc.raw})
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("New = %v, want error %q", err, tc.err)
			}
		})
	}
	if _, err := oemrecovery.New(nil); err == nil {
		t.Error("New(nil) succeeded")
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	// Testflinger's values.
	if oemrecovery.DefaultRecoveryCmdTimeout != 600*time.Second || oemrecovery.DefaultRecoveryTimeout != 3600*time.Second || oemrecovery.DefaultRecoveryPollInterval != 90*time.Second {
		t.Error("the defaults are not Testflinger's 600 s, 3600 s and 90 s")
	}
}

func TestInitializeDone(t *testing.T) {
	t.Parallel()
	const head = "ID   Status  Spawn               Ready               Summary\n"
	for _, tc := range []struct {
		name, out string
		want      bool
	}{
		{"done", head + "1    Done    today at 09:58 UTC  today at 09:59 UTC  Initialize system state\n2    Done    today at 09:58 UTC  today at 10:00 UTC  Initialize device\n", true},
		{"doing", head + "2    Doing   today at 09:58 UTC  -                   Initialize device\n", false},
		{"error", head + "2    Error   today at 09:58 UTC  today at 10:00 UTC  Initialize device\n", false},
		{"other change done", head + "1    Done    today at 09:58 UTC  today at 09:59 UTC  Install \"core22\" snap\n", false},
		{"no changes", "no changes found\n", false},
		{"Done in the summary only", head + "3    Doing   today at 09:58 UTC  -  Initialize device (Done soon)\n", false},
	} {
		if got := oemrecovery.InitializeDone(tc.out); got != tc.want {
			t.Errorf("%s: InitializeDone = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestControlHostHook(t *testing.T) {
	t.Parallel()
	d, err := oemrecovery.New(&drivers.DeviceConfig{Name: "d", Type: oemrecovery.Type, Raw: events.Data{"recovery_cmds": "x"}})
	if err != nil {
		t.Fatal(err)
	}
	// Testflinger's oemrecovery sends {"usb": "DUT"} with setup/provisioning.
	if got := d.(*oemrecovery.Driver).Hooks.SetupProvisioningData["usb"]; got != "DUT" {
		t.Errorf("setup/provisioning data usb = %v, want DUT", got)
	}
}
