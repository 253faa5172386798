package maas2

import (
	"errors"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/drivers/maas2/maasapi"
)

// disk, part, format and mount build layout entries.
func disk(id string, kv ...any) map[string]any { return entryOf("disk", id, kv) }
func part(id, device string, kv ...any) map[string]any {
	return entryOf("partition", id, append([]any{"device", device}, kv...))
}
func format(id, volume, fstype string, kv ...any) map[string]any {
	return entryOf("format", id, append([]any{"volume", volume, "fstype", fstype}, kv...))
}
func mount(id, device, path string) map[string]any {
	return entryOf("mount", id, []any{"device", device, "path", path})
}

func entryOf(typ, id string, kv []any) map[string]any {
	m := map[string]any{"id": id, "type": typ}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1]
	}
	return m
}

func list(entries ...map[string]any) []any {
	out := make([]any, len(entries))
	for i, e := range entries {
		out[i] = e
	}
	return out
}

// rootOn is a minimal layout: / on one partition of one disk.
func rootOn(size any) []any {
	return list(disk("d0"), part("p1", "d0", "size", size), format("f1", "p1", "ext4"), mount("m1", "f1", "/"))
}

func TestParseLayoutRejects(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		layout    any
		ephemeral bool
		want      string // the error's text
		index     int
	}{
		{"not a list", map[string]any{}, false, "provision_data.disks: must be a list", -1},
		{"entry not a mapping", []any{"disk0"}, false, "provision_data.disks[0]: must be a mapping, got a string", 0},
		{"no id", list(map[string]any{"type": "disk"}), false, "provision_data.disks[0]: id: required", 0},
		{"duplicate id", list(disk("d0"), disk("d0")), false, "provision_data.disks[1] (d0): id is also the id of entry 0", 1},
		{"no type", list(map[string]any{"id": "x"}), false, "provision_data.disks[0] (x): type: required", 0},
		{"unknown type", list(map[string]any{"id": "r", "type": "raid"}), false, "provision_data.disks[0] (r): type: unknown type raid", 0},
		{"missing disk", list(disk("d0"), part("p1", "d9", "size", "1G")), false,
			"provision_data.disks[1] (p1): device: d9 (no entry has this id) is not the id of a disk entry", 1},
		{"partition on a partition", list(disk("d0"), part("p1", "d0", "size", "1G"), part("p2", "p1", "size", "1G")), false,
			"provision_data.disks[2] (p2): device: p1 (a partition entry) is not the id of a disk entry", 2},
		{"missing partition", list(disk("d0"), part("p1", "d0", "size", "1G"), format("f1", "p2", "ext4")), false,
			"provision_data.disks[2] (f1): volume: p2 (no entry has this id) is not the id of a partition or disk entry", 2},
		{"mount of a partition", list(disk("d0"), part("p1", "d0", "size", "1G"), format("f1", "p1", "ext4"), mount("m1", "p1", "/")), false,
			"provision_data.disks[3] (m1): device: p1 (a partition entry) is not the id of a format entry", 3},
		{"unknown filesystem", list(disk("d0"), part("p1", "d0", "size", "1G"), format("f1", "p1", "ntfs")), false,
			"provision_data.disks[2] (f1): fstype: unknown filesystem ntfs", 2},
		{"no fstype", list(disk("d0"), part("p1", "d0", "size", "1G"), entryOf("format", "f1", []any{"volume", "p1"})), false,
			"provision_data.disks[2] (f1): fstype: required", 2},
		{"bad size", rootOn("12 gigs"), false, "provision_data.disks[1] (p1): size: 12 gigs is not a size", 1},
		{"zero size", rootOn(0), false, "provision_data.disks[1] (p1): size: 0 is not a size in bytes", 1},
		{"neither size nor alloc_pct", list(disk("d0"), part("p1", "d0")), false,
			"provision_data.disks[1] (p1): a partition needs a size or an alloc_pct", 1},
		{"alloc_pct over 100", list(disk("d0"), part("p1", "d0", "alloc_pct", 120)), false,
			"provision_data.disks[1] (p1): alloc_pct: must be a whole number from 1 to 100, got 120", 1},
		{"alloc_pct adding up over 100", list(disk("d0"), part("p1", "d0", "alloc_pct", 60), part("p2", "d0", "alloc_pct", 50)), false,
			"provision_data.disks[0] (d0): the alloc_pct of its partitions add up to 110, more than 100", 0},
		{"duplicate partition number", list(disk("d0"), part("p1", "d0", "size", "1G", "number", 1), part("p2", "d0", "size", "1G", "number", 1)), false,
			"provision_data.disks[2] (p2): number: 1 is also the number of entry 1 on disk d0", 2},
		{"volume formatted twice", list(disk("d0"), part("p1", "d0", "size", "1G"), format("f1", "p1", "ext4"), format("f2", "p1", "xfs")), false,
			"provision_data.disks[3] (f2): volume: p1 is already formatted by entry 2", 3},
		{"path mounted twice", list(disk("d0"), part("p1", "d0", "size", "1G"), part("p2", "d0", "size", "1G"),
			format("f1", "p1", "ext4"), format("f2", "p2", "ext4"), mount("m1", "f1", "/"), mount("m2", "f2", "/")), false,
			"provision_data.disks[6] (m2): path: / is also the path of entry 5", 6},
		{"relative path", list(disk("d0"), part("p1", "d0", "size", "1G"), format("f1", "p1", "ext4"), mount("m1", "f1", "data")), false,
			"provision_data.disks[3] (m1): path: data is not an absolute path", 3},
		{"whole disk formatted and partitioned", list(disk("d0"), part("p1", "d0", "size", "1G"), format("f1", "d0", "ext4")), false,
			"provision_data.disks[2] (f1): volume: disk d0 has partitions", 2},
		{"no root", list(disk("d0"), part("p1", "d0", "size", "1G"), format("f1", "p1", "ext4"), mount("m1", "f1", "/data")), false,
			"provision_data.disks: no mount entry has path /", -1},
		{"bad ptable", list(disk("d0", "ptable", "apm")), false, "provision_data.disks[0] (d0): ptable: apm is neither gpt nor msdos", 0},
		{"swap mounted", list(disk("d0"), part("p1", "d0", "size", "1G"), format("f1", "p1", "swap"), mount("m1", "f1", "/")), false,
			"provision_data.disks[3] (m1): device: f1 is swap", 3},
		{"control characters quoted", list(disk("d0\nFAKE LINE", "name", "x\ny")), false, `provision_data.disks[0] ("d0\nFAKE LINE"): name: "x\ny" must not contain`, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseLayout(tc.layout, "provision_data.disks", tc.ephemeral)
			var le *LayoutError
			if !errors.As(err, &le) {
				t.Fatalf("parseLayout = %v, want a *LayoutError", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
			if le.Index != tc.index {
				t.Errorf("error names entry %d, want %d", le.Index, tc.index)
			}
		})
	}
}

func TestParseLayoutAccepts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		layout    []any
		ephemeral bool
	}{
		{"minimal", rootOn("20G"), false},
		{"numbers as ids", list(disk("0"), map[string]any{"id": 1, "type": "partition", "device": 0, "size": 1 << 30},
			map[string]any{"id": 2, "type": "format", "volume": 1, "fstype": "ext4"}, map[string]any{"id": 3, "type": "mount", "device": 2, "path": "/"}), false},
		{"decimal size and TB", rootOn("1.5TB"), false},
		{"whole disk formatted", list(disk("d0"), format("f0", "d0", "xfs"), mount("m0", "f0", "/")), false},
		{"ephemeral without root", list(disk("d0"), part("p1", "d0", "size", "1G")), true},
		{"extra keys ignored", list(disk("d0", "model", "SSD", "serial", "X"), part("p1", "d0", "size", "1G"), format("f1", "p1", "ext4"), mount("m1", "f1", "/")), false},
		{"Testflinger's reference order (mount before its disk)", list(
			disk("disk0", "disk", 0, "ptable", "gpt"), part("disk0-part1", "disk0", "number", 1, "size", "2G", "alloc_pct", 80),
			format("disk0-part1-format", "disk0-part1", "ext4", "label", "nova-ephemeral"),
			mount("disk1-part1-mount", "disk1-part1-format", "/boot/efi"),
			disk("disk1", "disk", 1, "ptable", "gpt"), part("disk1-part1", "disk1", "number", 1, "size", "500M", "alloc_pct", 10),
			format("disk1-part1-format", "disk1-part1", "fat32", "label", "efi"),
			part("disk1-part2", "disk1", "number", 2, "size", "1G", "alloc_pct", 20),
			format("disk1-part2-format", "disk1-part2", "ext4", "label", "boot"), mount("disk1-part2-mount", "disk1-part2-format", "/boot"),
			part("disk1-part3", "disk1", "number", 3, "size", "10G", "alloc_pct", 60),
			format("disk1-part3-format", "disk1-part3", "ext4", "label", "ceph"), mount("disk1-part3-mount", "disk1-part3-format", "/"),
		), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseLayout(tc.layout, "provision_data.disks", tc.ephemeral); err != nil {
				t.Errorf("parseLayout: %v", err)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   any
		want int64
	}{
		{"1G", 1e9}, {"500M", 500e6}, {"10K", 10e3}, {"1000", 1000}, {1000, 1000}, {"1.5T", 1.5e12},
		{"1tb", 1e12}, {"2GB", 2e9}, {" 3g ", 3e9}, {float64(4096), 4096},
	} {
		got, err := parseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parseSize(%v) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []any{"", "G", "1X", "-1G", "1..5G", true, 0, "0"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%v) did not fail", bad)
		}
	}
}

// machine builds a machine's physical disks of the given sizes (ids 1,
// 2, ...), and a virtual one.
func machine(sizes ...int64) []maasapi.BlockDevice {
	var out []maasapi.BlockDevice
	for i, s := range sizes {
		out = append(out, maasapi.BlockDevice{ID: i + 1, Name: "sd" + string(rune('a'+i)), Type: "physical", Size: maasapi.Bytes(s)})
	}
	return append(out, maasapi.BlockDevice{ID: 99, Name: "vg0-lv0", Type: "virtual", Size: 1 << 50})
}

func TestPlan(t *testing.T) {
	t.Parallel()
	const gb = int64(1e9)
	const mib = int64(1 << 20)
	twoDisks := func(a, b string) []any {
		return list(disk("A"), part("a1", "A", "size", a), format("fa", "a1", "ext4"), mount("ma", "fa", "/"),
			disk("B"), part("b1", "B", "size", b), format("fb", "b1", "ext4"), mount("mb", "fb", "/data"))
	}
	for _, tc := range []struct {
		name   string
		layout []any
		disks  []maasapi.BlockDevice
		want   map[string]string // disk entry -> disk name
		sizes  map[string]int64  // partition entry -> size
		errMsg string
	}{
		{
			name: "first fit, in MAAS's order", layout: twoDisks("50G", "50G"), disks: machine(500*gb, 250*gb),
			want: map[string]string{"A": "sda", "B": "sdb"},
		},
		{
			name: "the first disk too small for the first entry", layout: twoDisks("300G", "50G"), disks: machine(250*gb, 500*gb),
			want: map[string]string{"A": "sdb", "B": "sda"},
		},
		{
			name: "a choice that first fit gets wrong", layout: twoDisks("50G", "400G"), disks: machine(500*gb, 100*gb),
			want: map[string]string{"A": "sdb", "B": "sda"},
		},
		{
			name: "sizes rounded up to 4 MiB", layout: rootOn("1G"), disks: machine(10 * gb),
			sizes: map[string]int64{"p1": (gb + 4*mib - 1) / (4 * mib) * (4 * mib)},
		},
		{
			name:   "alloc_pct of the usable space, adding up to 100",
			layout: list(disk("d"), part("p1", "d", "alloc_pct", 25), part("p2", "d", "alloc_pct", 75), format("f", "p2", "ext4"), mount("m", "f", "/")),
			disks:  machine(100 * gb),
			sizes: map[string]int64{
				"p1": (100*gb - 5*mib) * 25 / 100 / (4 * mib) * (4 * mib),
				"p2": (100*gb - 5*mib) * 75 / 100 / (4 * mib) * (4 * mib),
			},
		},
		{
			name:   "size and alloc_pct: the larger",
			layout: list(disk("d"), part("p1", "d", "size", "60G", "alloc_pct", 10), format("f", "p1", "ext4"), mount("m", "f", "/")),
			disks:  machine(100 * gb),
			sizes:  map[string]int64{"p1": (60*gb + 4*mib - 1) / (4 * mib) * (4 * mib)},
		},
		{
			name: "a partition bigger than every disk", layout: rootOn("600G"), disks: machine(500*gb, 250*gb),
			errMsg: "provision_data.disks[0] (d0): its partitions need 600.0 GB (with the partition table) and machine abc123 has sda 500.0 GB, sdb 250.0 GB: none is big enough",
		},
		{
			name: "more disk entries than disks", layout: twoDisks("1G", "1G"), disks: machine(500 * gb),
			errMsg: "provision_data.disks[4] (B): the layout has 2 disk entries and machine abc123 has sda 500.0 GB",
		},
		{
			name: "disks that do not fit together", layout: twoDisks("300G", "300G"), disks: machine(500*gb, 100*gb),
			errMsg: "provision_data.disks: the disk entries do not fit the machine's disks together (A needs 300.0 GB, B needs 300.0 GB)",
		},
		{
			name:   "size and alloc_pct overflowing the disk",
			layout: list(disk("d"), part("p1", "d", "size", "60G"), part("p2", "d", "alloc_pct", 50), format("f", "p1", "ext4"), mount("m", "f", "/")),
			disks:  machine(100 * gb),
			errMsg: "provision_data.disks[0] (d): its partitions take 110.0 GB and disk sda of machine abc123 holds 100.0 GB of partitions",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := parseLayout(tc.layout, "provision_data.disks", false)
			if err != nil {
				t.Fatalf("parseLayout: %v", err)
			}
			p, err := l.plan(tc.disks, "abc123")
			if tc.errMsg != "" {
				var le *LayoutError
				if !errors.As(err, &le) || !strings.Contains(err.Error(), tc.errMsg) {
					t.Fatalf("plan = %v, want a *LayoutError with %q", err, tc.errMsg)
				}
				return
			}
			if err != nil {
				t.Fatalf("plan: %v", err)
			}
			for id, name := range tc.want {
				if got := p.disk[l.byID[id]].Name; got != name {
					t.Errorf("disk entry %s on %s, want %s", id, got, name)
				}
			}
			for id, size := range tc.sizes {
				if got := p.size[l.byID[id]]; got != size {
					t.Errorf("partition %s: %d bytes, want %d", id, got, size)
				}
			}
		})
	}
}

func TestBootDisk(t *testing.T) {
	t.Parallel()
	l, err := parseLayout(list(
		disk("a"), part("a1", "a", "size", "1G"), format("fa", "a1", "ext4"), mount("ma", "fa", "/"),
		disk("b"), part("b1", "b", "size", "1G"), format("fb", "b1", "fat32"), mount("mb", "fb", "/boot/efi"),
		disk("c", "boot", true),
		disk("d"),
	), "provision_data.disks", false)
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{"a": false, "b": true, "c": true, "d": false} {
		if got := l.bootDisk(l.byID[id]); got != want {
			t.Errorf("bootDisk(%s) = %v, want %v", id, got, want)
		}
	}
}

func TestPartitionOrder(t *testing.T) {
	t.Parallel()
	l, err := parseLayout(list(disk("d"),
		part("third", "d", "size", "1G"), part("second", "d", "size", "1G", "number", 2), part("first", "d", "size", "1G", "number", 1),
		format("f", "first", "ext4"), mount("m", "f", "/"),
	), "provision_data.disks", false)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range l.partitionsOf("d") {
		got = append(got, e.id)
	}
	if strings.Join(got, ",") != "first,second,third" {
		t.Errorf("partitions in order %v", got)
	}
}

func TestEFIOrder(t *testing.T) {
	t.Parallel()
	listing := func(current, order string) string {
		return "BootCurrent: " + current + "\nTimeout: 1 seconds\nBootOrder: " + order + "\n" +
			"Boot0000* ubuntu\tHD(1,GPT,x)/File(\\EFI\\ubuntu\\shimx64.efi)\n" +
			"Boot0001* UEFI: PXE IPv4 Intel X710\tPciRoot(0x0)/MAC(3c,1)/IPv4(0.0.0.0)\n" +
			"Boot0002* UEFI: PXE IPv6 Intel X710\tPciRoot(0x0)/MAC(3c,1)/IPv6([::])\n" +
			"Boot0003* UEFI: Built-in EFI Shell\tFvVol(x)\n" +
			"Boot0004* UEFI: HTTP IPv4 Intel X710\tPciRoot(0x0)/MAC(3c,1)/IPv4(0.0.0.0)/Uri()\n"
	}
	for _, tc := range []struct {
		current, order, want string
	}{
		{"0000", "0000,0001,0002,0003,0004", "0001,0004,0000,0002,0003"},
		{"0004", "0000,0001,0002,0003,0004", "0004,0001,0000,0002,0003"},
		{"0001", "0001,0004,0000,0002,0003", "0001,0004,0000,0002,0003"},
	} {
		_, next, err := efiOrder(listing(tc.current, tc.order))
		if err != nil || strings.Join(next, ",") != tc.want {
			t.Errorf("efiOrder(current %s, order %s) = %v, %v; want %s", tc.current, tc.order, next, err, tc.want)
		}
	}
	if _, _, err := efiOrder("EFI variables are not supported on this system.\n"); err == nil {
		t.Error("efiOrder of a listing without BootOrder did not fail")
	}
}

func TestParseProvisionData(t *testing.T) {
	t.Parallel()
	r, err := parseProvisionData(nil)
	if err != nil || r.distro != DefaultDistro || r.userData != nil || r.disks != nil {
		t.Errorf("parseProvisionData(nil) = %+v, %v", r, err)
	}
	r, err = parseProvisionData(map[string]any{"disks": []any{}, "distro": ""})
	if err != nil || r.disks != nil || r.distro != DefaultDistro {
		t.Errorf("empty disks and distro: %+v, %v; want the defaults", r, err)
	}
	for _, tc := range []struct {
		pd   map[string]any
		want string
	}{
		{map[string]any{"url": "http://x/y.img"}, "provision_data.url: unknown key for a maas2 device (known: distro, kernel, user_data, disks, ephemeral)"},
		{map[string]any{"distro": 22}, "provision_data.distro: must be a string"},
		{map[string]any{"distro": "jammy; reboot"}, "provision_data.distro: jammy; reboot is not a MAAS distro name"},
		{map[string]any{"kernel": "hwe 22.04"}, "provision_data.kernel: hwe 22.04 is not a MAAS kernel name"},
		{map[string]any{"user_data": []any{"x"}}, "provision_data.user_data: must be a string"},
		{map[string]any{"ephemeral": "yes"}, "provision_data.ephemeral: must be true or false"},
		{map[string]any{"disks": "flat"}, "provision_data.disks: must be a list"},
	} {
		_, err := parseProvisionData(tc.pd)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseProvisionData(%v) = %v, want an error with %q", tc.pd, err, tc.want)
		}
	}
}
