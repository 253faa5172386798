package muxpi

import (
	"fmt"
	"strconv"
)

// The test user the provisioned image gets, Testflinger's.
const (
	testUser     = "ubuntu"
	testPassword = "ubuntu"
)

// userEntry is the cloud-config entry of the test user: a password login
// and passwordless sudo.
var userEntry = fmt.Sprintf(`  - name: %[1]s
    gecos: %[1]s
    shell: /bin/bash
    groups: [adm, audio, cdrom, dialout, dip, plugdev, sudo, video]
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    lock_passwd: false
    plain_text_passwd: %[2]s
`, testUser, testPassword)

// userData is the NoCloud user-data that creates the test user.
func userData() []byte {
	return []byte("#cloud-config\nssh_pwauth: true\nusers:\n" + userEntry + "chpasswd:\n  expire: false\n")
}

// core20CloudConfig is the cloud.cfg.d drop-in of Ubuntu Core 20 and
// later, which read cloud-init configuration from ubuntu-seed.
func core20CloudConfig() []byte {
	return []byte("#cloud-config\ndatasource_list: [NoCloud, None]\nusers:\n" + userEntry)
}

// metaData is the NoCloud meta-data; the instance id names the device so
// that cloud-init runs on the new image.
func metaData(device string) []byte {
	return []byte("instance-id: " + strconv.Quote("flinger-muxpi-"+device) + "\n")
}

// sudoers is the sudoers.d file of the test user.
func sudoers() []byte {
	return []byte(testUser + " ALL=(ALL) NOPASSWD:ALL\n")
}

// oemConfigService replaces oem-config's unit on Raspberry Pi desktop
// images before 25.04 so that it answers its questions from /preseed.cfg.
func oemConfigService() []byte {
	return []byte(`[Unit]
Description=End-user configuration after initial OEM installation (preseeded)
ConditionFileIsExecutable=/usr/sbin/oem-config-firstboot
After=getty@tty1.service

[Service]
Type=oneshot
StandardOutput=tty
StandardError=tty
TTYPath=/dev/tty1
ExecStart=/bin/sh -ec 'debconf-set-selections /preseed.cfg; exec /usr/sbin/oem-config-firstboot --automatic'

[Install]
WantedBy=oem-config.target
`)
}

// oemConfigPreseed answers oem-config's questions: the test user, and
// neutral locale, keyboard and time zone.
func oemConfigPreseed() []byte {
	return []byte(fmt.Sprintf(`d-i debian-installer/locale string en_US.UTF-8
d-i keyboard-configuration/xkb-keymap select us
d-i keyboard-configuration/layoutcode string us
d-i time/zone string Etc/UTC
d-i passwd/user-fullname string %[1]s
d-i passwd/username string %[1]s
d-i passwd/user-password password %[2]s
d-i passwd/user-password-again password %[2]s
d-i user-setup/allow-password-weak boolean true
d-i passwd/auto-login boolean false
`, testUser, testPassword))
}
