package sim_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sshx"
)

func TestPartitionNode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		dev  string
		n    int
		want string
	}{
		{"/dev/sda", 2, "/dev/sda2"},
		{"/dev/mmcblk1", 2, "/dev/mmcblk1p2"},
		{"/dev/nvme0n1", 1, "/dev/nvme0n1p1"},
		{"/dev/sdb", 10, "/dev/sdb10"},
	} {
		if got := sim.PartitionNode(tc.dev, tc.n); got != tc.want {
			t.Errorf("PartitionNode(%q, %d) = %q, want %q", tc.dev, tc.n, got, tc.want)
		}
	}
}

// testLayout is a layout of two partitions: boot, and a root file system
// holding the image's os-release.
func testLayout(im sim.Image) []sim.Partition {
	return []sim.Partition{
		{Label: "boot", Files: map[string][]byte{"config.txt": []byte("kernel=vmlinuz\n")}},
		{Label: "root", Dirs: sim.RootDirs, Files: map[string][]byte{"etc/os-release": []byte(im.OSRelease)}},
	}
}

func TestMounts(t *testing.T) {
	t.Parallel()
	d := start(t, sim.Faults{})
	disk := sim.NewDisk("/dev/sda", 0)
	d.AddDisk("/dev/sda", disk)
	vol := sim.NewVolume(disk, testLayout)
	mounts := sim.NewMounts(d, func(node string) (*sim.Volume, int, bool) {
		for n := 1; n <= len(vol.Partitions()); n++ {
			if node == sim.PartitionNode("/dev/sda", n) {
				return vol, n, true
			}
		}
		return nil, 0, false
	})
	mounts.Install()
	c := mustDial(t, d, sshx.TOFU(t.TempDir()))
	sh := func(line string, stdin []byte, wantCode int) string {
		t.Helper()
		out, errs, code := runIn(t, c, line, stdin)
		if code != wantCode {
			t.Fatalf("%s: exit %d, want %d (stderr %q)", line, code, wantCode, errs)
		}
		return out
	}

	if vol.Partitions() != nil || vol.Disk() != disk {
		t.Fatalf("an empty disk has partitions: %+v", vol.Partitions())
	}
	sh("sudo mount /dev/sda2 /mnt", nil, 32) // nothing written yet
	im := sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Size: 64 << 10, Seed: 3}
	sh("sudo dd of=/dev/sda bs=16M status=none", im.Bytes(), 0)
	if got := vol.Partitions(); len(got) != 2 || got[1].Label != "root" {
		t.Fatalf("partitions after the write: %+v", got)
	}

	sh("mount /dev/sda2 /mnt", nil, 32) // not root
	sh("sudo mount -o rw /dev/sda2 /mnt/", nil, 0)
	sh("sudo mount /dev/sda2 /media", nil, 32) // mounted already
	sh("sudo mount /dev/sda1 /mnt", nil, 32)   // the mount point is busy
	if got := sh("ls /mnt", nil, 0); !strings.Contains(got, "etc\nhome\n") {
		t.Errorf("ls /mnt = %q, want the root file system's directories", got)
	}
	if got := sh("cat /mnt/etc/os-release", nil, 0); got != im.OSRelease {
		t.Errorf("os-release = %q", got)
	}
	if got := sh("ls /mnt/etc/os-release", nil, 0); got != "/mnt/etc/os-release\n" {
		t.Errorf("ls of a file = %q", got)
	}
	sh("ls /nowhere", nil, 2)
	sh("ls /tmp", nil, 0)
	for _, tc := range []struct {
		line string
		code int
	}{
		{"test -d /mnt/etc", 0}, {"test -f /mnt/etc", 1}, {"test -f /mnt/etc/os-release", 0},
		{"test -e /mnt/nothing", 1}, {"test -b /dev/sda", 0}, {"test -f /dev/sda", 1},
		{"[ -d /mnt ]", 0}, {"[ -d /mnt", 2}, {"test -x /mnt", 2},
	} {
		sh(tc.line, nil, tc.code)
	}
	sh("sudo tee /mnt/var/lib/seed", []byte("seed"), 0)
	sh("sudo cp /mnt/var/lib/seed /mnt/etc", nil, 0)
	sh("sudo chmod 0440 /mnt/etc/seed /mnt/etc", nil, 0)
	sh("sudo chmod 0440 /mnt/etc/none", nil, 1)
	sh("sudo cp /mnt/none /mnt/etc", nil, 1)
	if got := string(mounts.PartitionFiles(vol, 2)["etc/seed"]); got != "seed" {
		t.Errorf("files of the mounted partition: etc/seed = %q", got)
	}
	if l := mounts.List(); len(l) != 1 || l[0].Dir != "/mnt" || l[0].Node != "/dev/sda2" || l[0].N != 2 || l[0].Volume != vol {
		t.Errorf("List() = %+v", l)
	}

	sh("umount /mnt", nil, 32) // not root
	sh("sudo umount /dev/sda2", nil, 0)
	sh("sudo umount /mnt", nil, 32) // not mounted
	if files := d.Files(); len(files) != 0 {
		t.Errorf("files left on the host after umount: %q", files)
	}
	files := mounts.PartitionFiles(vol, 2)
	if string(files["var/lib/seed"]) != "seed" || string(files["etc/seed"]) != "seed" {
		t.Errorf("partition 2 after umount: %q", files)
	}
	if got := vol.Partitions()[1].Files["etc/seed"]; string(got) != "seed" {
		t.Errorf("the volume lost what was written: %q", got)
	}
	if mounts.PartitionFiles(vol, 3) != nil {
		t.Error("PartitionFiles of a partition that does not exist")
	}

	// Mounted again, the partition has what was written; a new image
	// written to the disk starts from its own layout.
	sh("sudo mount /dev/sda2 /mnt", nil, 0)
	if got := sh("cat /mnt/etc/seed", nil, 0); got != "seed" {
		t.Errorf("seed after a remount = %q", got)
	}
	mounts.UnmountVolume(vol)
	if len(mounts.List()) != 0 || len(d.Files()) != 0 {
		t.Errorf("UnmountVolume left %+v, %q", mounts.List(), d.Files())
	}
	sh("sudo mount /dev/sda1 /boot", nil, 0)
	other := sim.Image{OSRelease: sim.UbuntuRelease("22.04", "jammy"), Size: 64 << 10, Seed: 4}
	sh("sudo dd of=/dev/sda bs=16M status=none", other.Bytes(), 0)
	mounts.UnmountAll()
	if got := mounts.PartitionFiles(vol, 2); !bytes.Equal(got["etc/os-release"], []byte(other.OSRelease)) || got["etc/seed"] != nil {
		t.Errorf("partition 2 of the new image: %q", got)
	}
}
