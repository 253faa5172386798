package oemscript

import (
	"fmt"
	"strings"
)

// What ubuntu-recovery (the script's --ubr) needs, and where it goes.
const (
	// recoveryLabel is the recovery partition's label ubuntu-recovery
	// looks for.
	recoveryLabel = "PQSERVICE"
	// recoveryEntry is the GRUB entry that boots ubuntu-recovery.
	recoveryEntry = "ubuntu-recovery restore"
	// grubEntryFile generates that entry.
	grubEntryFile = "/etc/grub.d/99_ubuntu_recovery"
	// dellGrubEntryFile is dell-recovery's entry, removed in its favour.
	dellGrubEntryFile = "/etc/grub.d/99_dell_recovery"
	// grubDefaultsFile is where the OEM image keeps its GRUB settings.
	grubDefaultsFile = "/etc/default/grub.d/automatic-oem-config.cfg"
)

// grubDefaults makes GRUB boot the recovery entry, showing the menu for 5 s.
var grubDefaults = fmt.Sprintf("GRUB_DEFAULT=%q\nGRUB_TIMEOUT_STYLE=menu\nGRUB_TIMEOUT=5\n", recoveryEntry)

// ubuntuRecoveryCfg is the debconf preseed of an unattended
// ubuntu-recovery factory reset: a GPT layout with a FAT recovery
// partition labelled PQSERVICE, no dual boot, dynamic swap and OOBE, and
// a reboot (not a power-off) at the end.
const ubuntuRecoveryCfg = `# ubuntu-recovery: unattended factory reset (written by Flinger)
ubiquity ubuntu-oobe/user-interface string dynamic
ubiquity ubuntu-recovery/recovery_partition_filesystem string 0c
ubiquity ubuntu-recovery/active_partition string 1
ubiquity ubuntu-recovery/dual_boot_layout string primary
ubiquity ubuntu-recovery/disk_layout string gpt
ubiquity ubuntu-recovery/swap string dynamic
ubiquity ubuntu-recovery/dual_boot boolean false
ubiquity ubiquity/reboot boolean true
ubiquity ubiquity/poweroff boolean false
ubiquity ubuntu-recovery/recovery_hotkey/partition_label string ` + recoveryLabel + `
ubiquity ubuntu-recovery/recovery_type string dev
`

// localRepoScripts are the installer hooks, by path in the recovery
// partition, that make the ISO's packages (/cdrom/debs) an apt source while
// the system is installed, and remove that source afterwards.
var localRepoScripts = map[string]string{
	"/scripts/chroot-scripts/fish/00-setup-local-repo": `#!/bin/bash
# Make the packages of the recovery media an apt source during the install (written by Flinger).
set -ex
mkdir -p /tmp/cdrom_debs
apt-ftparchive packages /cdrom/debs > /tmp/cdrom_debs/Packages
echo 'deb [ trusted=yes ] file:/. /tmp/cdrom_debs/' > /etc/apt/sources.list.d/flinger-recovery-media.list
apt-get update
`,
	"/scripts/chroot-scripts/os-post/99-remove-local-repo": `#!/bin/bash
# Remove the apt source of the recovery media once installed (written by Flinger).
set -ex
rm -f /etc/apt/sources.list.d/flinger-recovery-media.list
apt-get update
`,
}

// GrubEntry returns the /etc/grub.d script that adds the
// "ubuntu-recovery restore" entry, which boots the casper system of the
// recovery partition whose file system UUID is uuid into an automatic
// ubuntu-recovery (from an ubuntu.iso on it, when there is one). uuid must
// be made of hex digits and dashes.
func GrubEntry(uuid string) string {
	return `#!/bin/sh
# The ubuntu-recovery factory reset entry (written by Flinger).
set -e
cat <<'EOF'
menuentry "` + recoveryEntry + `" --hotkey f9 {
	search --no-floppy --set --fs-uuid ` + uuid + `
	if [ -s /boot/grub/common.cfg ]; then
		source /boot/grub/common.cfg
	else
		set options="boot=casper automatic-ubiquity noprompt nomodeset quiet splash"
	fi
	if [ -f /ubuntu.iso ]; then
		loopback loop /ubuntu.iso
		set root=(loop)
		set options="$options iso-scan/filename=/ubuntu.iso"
	fi
	if [ -n "${lang}" ]; then
		set options="$options locale=$lang"
	fi
	linux /casper/vmlinuz ubuntu-recovery/recovery_type=hdd $options
	initrd /casper/initrd
}
EOF
`
}

// RebootAtEnd returns the project preseed cfg changed so that the
// installer reboots at its end rather than powering the laptop off.
func RebootAtEnd(cfg string) string {
	r := strings.NewReplacer(
		"ubiquity/reboot boolean false", "ubiquity/reboot boolean true",
		"ubiquity/poweroff boolean true", "ubiquity/poweroff boolean false",
	)
	return r.Replace(cfg)
}
