package oemscript_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/oemscript"
	"github.com/flingerlab/flinger/events"
)

func TestVendors(t *testing.T) {
	t.Parallel()
	// Testflinger: HP and Lenovo pass --ubr to recovery-from-iso.sh; Dell
	// and the generic connector pass nothing.
	for typ, ubr := range map[string]bool{oemscript.Type: false, oemscript.TypeDell: false, oemscript.TypeHP: true, oemscript.TypeLenovo: true} {
		v, ok := oemscript.VendorOf(typ)
		if !ok || v.UbuntuRecovery != ubr {
			t.Errorf("%s: vendor %+v, %v; want ubuntu-recovery %v", typ, v, ok, ubr)
		}
		if _, ok := drivers.Canonical(typ); !ok {
			t.Errorf("%s is not registered", typ)
		}
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		typ  string
		raw  events.Data
		err  string
	}{
		{"defaults", oemscript.TypeHP, nil, ""},
		{"all keys", oemscript.TypeDell, events.Data{"iso_path": "/home/ubuntu/x.iso", "recovery_partition": "/dev/sda2", "preseed_dir": dir, "recovery_timeout": "2h", "command_timeout": 60}, ""},
		{"unknown type", "acer_oemscript", nil, "unknown connector type"},
		{"relative iso_path", oemscript.Type, events.Data{"iso_path": "x.iso"}, "iso_path"},
		{"directory iso_path", oemscript.Type, events.Data{"iso_path": "/var/tmp/"}, "iso_path"},
		{"bad recovery_partition", oemscript.Type, events.Data{"recovery_partition": "/dev/sda2; reboot"}, "recovery_partition"},
		{"preseed_dir not a directory", oemscript.Type, events.Data{"preseed_dir": file}, "preseed_dir"},
		{"bad iso_timeout", oemscript.Type, events.Data{"iso_timeout": "later"}, "iso_timeout"},
		{"empty recovery_username", oemscript.Type, events.Data{"recovery_username": ""}, "recovery_username"},
		{"recovery_password not a string", oemscript.Type, events.Data{"recovery_password": 7}, "recovery_password"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := oemscript.New(&drivers.DeviceConfig{Name: "d", Type: tc.typ, Raw: tc.raw})
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("New = %v, want error %q", err, tc.err)
			}
		})
	}
}

func TestSource(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		pd   events.Data
		err  string
	}{
		{"https", events.Data{"url": "https://images.example.com/noble.iso"}, ""},
		{"with sha256", events.Data{"url": "http://images/x.iso", "sha256": strings.Repeat("a", 64)}, ""},
		{"missing", events.Data{}, "provision_data.url: required"},
		{"not a string", events.Data{"url": 3}, "provision_data.url"},
		{"file URL", events.Data{"url": "file:///etc/shadow"}, "not an http or https URL"},
		{"no host", events.Data{"url": "http:///x.iso"}, "not an http or https URL"},
		{"sha256 not a string", events.Data{"url": "http://h/x.iso", "sha256": true}, "provision_data.sha256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, err := oemscript.Source(&events.Job{ProvisionData: tc.pd})
			if tc.err == "" && (err != nil || src.URL != tc.pd["url"]) || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("Source = %+v, %v; want error %q", src, err, tc.err)
			}
		})
	}
	if _, err := oemscript.Source(nil); err == nil {
		t.Error("Source(nil) succeeded")
	}
}

func TestRecoveryPartition(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, lsblk, want string
	}{
		{"nvme", "nvme0n1\nnvme0n1p1 /boot/efi\nnvme0n1p2\nnvme0n1p3 /\n", "/dev/nvme0n1p2"},
		{"sata", "sda\nsda1 /boot/efi\nsda2\nsda3 /\nloop0 /snap/core22/1380\n", "/dev/sda2"},
		{"emmc", "mmcblk0\nmmcblk0p1 /boot/efi\nmmcblk0p2\n", "/dev/mmcblk0p2"},
		{"no EFI partition", "sda\nsda1 /\n", ""},
		{"efi elsewhere only in a name", "efivars\nsda1 /\n", ""},
	} {
		got, err := oemscript.RecoveryPartition(tc.lsblk)
		if got != tc.want || (err != nil) != (tc.want == "") {
			t.Errorf("%s: RecoveryPartition = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestSameRelease(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		info, version   string
		same, checkable bool
	}{
		{`Ubuntu 24.04 LTS "Noble Numbat" - Release amd64 (20240424)`, "24.04", true, true},
		{`Ubuntu 22.04.3 LTS "Jammy Jellyfish" - Release amd64 (20230807)`, "22.04", true, true},
		{`Ubuntu 22.04.3 LTS "Jammy Jellyfish" - Release amd64 (20230807)`, "24.04", false, true},
		{"dell-bto-noble-X10-20240501-3", "24.04", false, false},
		{"", "24.04", false, false},
		{"Ubuntu 24.04 - Release amd64", "", false, false},
	} {
		same, checkable := oemscript.SameRelease(tc.info, tc.version)
		if same != tc.same || checkable != tc.checkable {
			t.Errorf("SameRelease(%q, %q) = %v, %v; want %v, %v", tc.info, tc.version, same, checkable, tc.same, tc.checkable)
		}
	}
}

func TestPreseed(t *testing.T) {
	t.Parallel()
	cfg := "ubiquity ubiquity/reboot boolean false\nubiquity ubiquity/poweroff boolean true\nd-i keep this\n"
	got := oemscript.RebootAtEnd(cfg)
	if got != "ubiquity ubiquity/reboot boolean true\nubiquity ubiquity/poweroff boolean false\nd-i keep this\n" {
		t.Errorf("RebootAtEnd = %q", got)
	}
	e := oemscript.GrubEntry("3A1F-9C2E")
	for _, want := range []string{`menuentry "ubuntu-recovery restore"`, "--fs-uuid 3A1F-9C2E", "<<'EOF'", "$options"} {
		if !strings.Contains(e, want) {
			t.Errorf("GrubEntry lacks %q:\n%s", want, e)
		}
	}
}
