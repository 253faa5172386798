// Package cloudinit holds the cloud-init NoCloud seed Testflinger's
// connectors (cm3, dragonboard) write into the images they provision, so
// that an image's first boot creates the test user ubuntu, password
// ubuntu, and allows password logins over SSH. The meta-data names
// instance-id, which cloud-init reads (Testflinger writes instance_id).
package cloudinit

// The test user the seed creates.
const (
	User     = "ubuntu"
	Password = "ubuntu"
)

// SeedDir is where cloud-init looks for a NoCloud seed, relative to the
// image's root file system (on Ubuntu Core 16 and 18, to system-data in
// the writable partition).
const SeedDir = "var/lib/cloud/seed/nocloud-net"

// MetaData and UserData are the files meta-data and user-data of the seed.
const (
	MetaData = "instance-id: cloud-image\n"
	UserData = `#cloud-config
password: ubuntu
chpasswd:
  list:
    - ubuntu:ubuntu
  expire: false
ssh_pwauth: true
`
)

// Core20Config is the seed of Ubuntu Core 20 and later, which read no
// seed directory before their first boot: a cloud.cfg.d drop-in (under
// data/etc/cloud/cloud.cfg.d on ubuntu-seed) holding the same user-data
// and meta-data inline.
const Core20Config = `#cloud-config
datasource_list: [ NoCloud, None ]
datasource:
  NoCloud:
    user-data: |
      #cloud-config
      password: ubuntu
      chpasswd:
        list:
          - ubuntu:ubuntu
        expire: false
      ssh_pwauth: true
    meta-data: |
      instance-id: cloud-image
`

// Sudoers is the sudoers.d file that gives the test user sudo without a
// password; it must be installed with mode 0440.
const Sudoers = User + " ALL=(ALL) NOPASSWD:ALL\n"
