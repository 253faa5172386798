package oemsim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers/sim"
)

// commands returns the laptop's commands beyond sim.DUT's built-in ones.
func (r *Rig) commands() map[string]sim.Command {
	m := map[string]sim.Command{
		"lsblk":        r.lsblk,
		"blkid":        r.blkid,
		"mount":        r.mount,
		"umount":       r.umount,
		"rsync":        r.rsync,
		"cp":           r.cp,
		"chmod":        r.chmod,
		"fatlabel":     r.fatlabel,
		"journalctl":   r.journalctl,
		"update-grub":  r.updateGrub,
		"grub-editenv": r.grubEditenv,
		"grub-reboot":  r.grubReboot,
		"systemctl":    r.systemctl,
		"snap":         r.snap,
		"apt-get":      r.aptGet,
		"dd":           sim.DD{Open: r.openFile}.Run,
		"rm":           r.rm,
		"reboot":       r.rebootCmd,
		"/sbin/reboot": r.rebootCmd,
		"shutdown":     r.shutdown,
		"sh":           r.sh,
	}
	if r.opts.Recovery == DellRecovery {
		m["dell-restore-system"] = r.dellRestore
	}
	return m
}

// current reports whether x runs on the current incarnation.
func (r *Rig) current(x *sim.Exec) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dut == x.DUT
}

// block is one row of lsblk.
type block struct {
	name, typ, mount, fstype, label, uuid string
	size                                  int64
}

// blocks returns the laptop's block devices.
func (r *Rig) blocks() []block {
	r.mu.Lock()
	defer r.mu.Unlock()
	mountOf := func(dev string) string {
		for mp, src := range r.mounts {
			if src == dev {
				return mp
			}
		}
		return ""
	}
	const diskSize = 512 << 30
	b := []block{
		{name: Disk, typ: "disk", size: diskSize},
		{name: "nvme0n1p1", typ: "part", mount: "/boot/efi", fstype: "vfat", uuid: "5F2A-11C0", size: 512 << 20},
		{name: "nvme0n1p2", typ: "part", mount: mountOf(RecoveryPartition), fstype: "vfat", label: r.label, uuid: RecoveryUUID, size: r.opts.RecoverySize},
		{name: "nvme0n1p3", typ: "part", mount: "/", fstype: "ext4", uuid: "9d1c6e2a-5b7f-4c1e-8f3a-2b6d0e4a7c11", size: diskSize - 512<<20 - r.opts.RecoverySize},
	}
	loop := 0
	for _, mp := range slices.Sorted(maps.Keys(r.mounts)) {
		if f, ok := r.files[r.mounts[mp]]; ok {
			b = append(b, block{name: "loop" + strconv.Itoa(loop), typ: "loop", mount: mp, fstype: "iso9660", size: f.Last().Bytes})
			loop++
		}
	}
	return b
}

// lsblk lists block devices: lsblk [-l] [-n] [-b] [-p] [-o COLS] [DEV...].
func (r *Rig) lsblk(_ context.Context, x *sim.Exec) int {
	cols := []string{"NAME", "MAJ:MIN", "RM", "SIZE", "RO", "TYPE", "MOUNTPOINTS"}
	var noHead, bytes, full bool
	var devs []string
	args := x.Args[1:]
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-o" || a == "--output":
			if i+1 >= len(args) {
				return x.Errorf(1, "option requires an argument -- 'o'")
			}
			i++
			cols = strings.Split(strings.ToUpper(args[i]), ",")
		case strings.HasPrefix(a, "--output="):
			cols = strings.Split(strings.ToUpper(strings.TrimPrefix(a, "--output=")), ",")
		case strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "--"):
			for _, f := range a[1:] {
				switch f {
				case 'l':
				case 'n':
					noHead = true
				case 'b':
					bytes = true
				case 'p':
					full = true
				default:
					return x.Errorf(1, "invalid option -- '%c'", f)
				}
			}
		case strings.HasPrefix(a, "--"):
			return x.Errorf(1, "unrecognized option '%s'", a)
		default:
			devs = append(devs, a)
		}
	}
	rows := r.blocks()
	if len(devs) > 0 {
		var sel []block
		for _, d := range devs {
			i := slices.IndexFunc(rows, func(b block) bool { return "/dev/"+b.name == d })
			if i < 0 {
				return x.Errorf(32, "%s: not a block device", d)
			}
			sel = append(sel, rows[i])
		}
		rows = sel
	}
	var lines [][]string
	if !noHead {
		lines = append(lines, cols)
	}
	for _, b := range rows {
		var l []string
		for _, c := range cols {
			var v string
			switch c {
			case "NAME", "KNAME":
				v = b.name
				if full {
					v = "/dev/" + v
				}
			case "PATH":
				v = "/dev/" + b.name
			case "MAJ:MIN":
				v = "259:0"
			case "RM", "RO":
				v = "0"
			case "SIZE":
				v = humanSize(b.size, bytes)
			case "TYPE":
				v = b.typ
			case "MOUNTPOINT", "MOUNTPOINTS":
				v = b.mount
			case "FSTYPE":
				v = b.fstype
			case "LABEL":
				v = b.label
			case "UUID":
				v = b.uuid
			default:
				return x.Errorf(1, "unknown column: %s", c)
			}
			l = append(l, v)
		}
		lines = append(lines, l)
	}
	widths := make([]int, len(cols))
	for _, l := range lines {
		for i, v := range l {
			widths[i] = max(widths[i], len(v))
		}
	}
	for _, l := range lines {
		var sb strings.Builder
		for i, v := range l {
			if i > 0 {
				sb.WriteByte(' ')
			}
			if i == len(l)-1 {
				sb.WriteString(v)
			} else {
				fmt.Fprintf(&sb, "%-*s", widths[i], v)
			}
		}
		fmt.Fprintln(x.Stdout, strings.TrimRight(sb.String(), " "))
	}
	return 0
}

func humanSize(n int64, bytes bool) string {
	if bytes {
		return strconv.FormatInt(n, 10)
	}
	for _, u := range []struct {
		s string
		n int64
	}{{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if n >= u.n {
			return strconv.FormatFloat(float64(n)/float64(u.n), 'f', -1, 64) + u.s
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

// blkid prints a partition's attributes: blkid [-s TAG] [-o value] DEV.
func (r *Rig) blkid(_ context.Context, x *sim.Exec) int {
	var tag, dev string
	value := false
	args := x.Args[1:]
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "-s":
			i++
			if i < len(args) {
				tag = args[i]
			}
		case "-o":
			i++
			value = i < len(args) && args[i] == "value"
		default:
			dev = args[i]
		}
	}
	for _, b := range r.blocks() {
		if "/dev/"+b.name != dev || b.typ != "part" {
			continue
		}
		attrs := [][2]string{{"LABEL", b.label}, {"UUID", b.uuid}, {"TYPE", b.fstype}}
		var out []string
		for _, a := range attrs {
			if a[1] == "" || (tag != "" && a[0] != tag) {
				continue
			}
			if value {
				out = append(out, a[1])
			} else {
				out = append(out, fmt.Sprintf("%s=%q", a[0], a[1]))
			}
		}
		if value {
			fmt.Fprintln(x.Stdout, strings.Join(out, "\n"))
		} else {
			fmt.Fprintf(x.Stdout, "%s: %s\n", dev, strings.Join(out, " "))
		}
		return 0
	}
	return 2
}

// mount mounts an ISO file (-o loop) or a partition: mount [-o OPTS] SRC DIR.
// The laptop keeps its own mount table, not a sim.Mounts (which belongs
// to one DUT): the table outlives each incarnation of the DUT, the
// partitions' files (under /cdrom) stay on the laptop whether mounted or
// not, and what a mount adds is an ISO's files. Its cp and chmod,
// likewise, act on whichever incarnation runs them.
func (r *Rig) mount(_ context.Context, x *sim.Exec) int {
	var opts string
	var pos []string
	args := x.Args[1:]
	for i := 0; i < len(args); i++ {
		switch {
		case args[i] == "-o":
			i++
			if i < len(args) {
				opts = args[i]
			}
		case strings.HasPrefix(args[i], "-"):
		default:
			pos = append(pos, args[i])
		}
	}
	if len(pos) != 2 {
		return x.Errorf(1, "bad usage (simulated: mount [-o OPTS] SOURCE DIR)")
	}
	src, dir := pos[0], strings.TrimSuffix(pos[1], "/")
	r.mu.Lock()
	if cur, ok := r.mounts[dir]; ok {
		r.mu.Unlock()
		return x.Errorf(32, "%s: %s already mounted or mount point busy.", dir, cur)
	}
	f, isFile := r.files[src]
	r.mu.Unlock()
	disk := x.DUT.Disk(src)
	switch {
	case disk == nil:
		return x.Errorf(32, "%s: special device %s does not exist.", dir, src)
	case slices.Contains(strings.Split(opts, ","), "loop"):
		if !isFile {
			return x.Errorf(32, "%s: %s is not a file to loop mount", dir, src)
		}
		im, err := isoOf(f)
		if err != nil {
			return x.Errorf(32, "%s: wrong fs type, bad option, bad superblock on /dev/loop0, missing codepage or helper program, or other error (%v).", dir, err)
		}
		r.writeISOFiles(x.DUT, dir, im)
	case isFile:
		return x.Errorf(32, "%s: %s is a file: use -o loop", dir, src)
	}
	r.mu.Lock()
	r.mounts[dir] = src
	r.mu.Unlock()
	return 0
}

// isoOf returns the complete ISO a file disk holds.
func isoOf(f *sim.Disk) (sim.Image, error) {
	w := f.Last()
	im, err := sim.Bootable(w)
	if err != nil {
		return im, err
	}
	if im.Kind != "iso" {
		return im, fmt.Errorf("a %q image, not an ISO", im.Kind)
	}
	if im.SHA256() != w.SHA256 {
		return im, errors.New("the ISO's content is corrupt")
	}
	return im, nil
}

// umount unmounts each directory given: umount [-l] DIR...
func (r *Rig) umount(_ context.Context, x *sim.Exec) int {
	code := 0
	for _, a := range x.Args[1:] {
		if strings.HasPrefix(a, "-") {
			continue
		}
		dir := strings.TrimSuffix(a, "/")
		r.mu.Lock()
		src, ok := r.mounts[dir]
		_, loop := r.files[src]
		delete(r.mounts, dir)
		r.mu.Unlock()
		if !ok {
			fmt.Fprintf(x.Stderr, "umount: %s: not mounted.\n", dir)
			code = 32
			continue
		}
		if loop {
			for _, f := range x.DUT.Files() {
				if strings.HasPrefix(f, dir+"/") {
					x.DUT.RemoveFile(f)
				}
			}
		}
	}
	return code
}

// rsync copies a loop-mounted ISO into a mounted partition, as
// recovery-from-iso.sh does: rsync [OPTIONS] SRC/ DST/.
func (r *Rig) rsync(ctx context.Context, x *sim.Exec) int {
	var pos []string
	del, verbose := false, false
	for _, a := range x.Args[1:] {
		switch {
		case a == "--delete":
			del = true
		case strings.HasPrefix(a, "--"):
		case strings.HasPrefix(a, "-"):
			verbose = verbose || strings.Contains(a, "v")
		default:
			pos = append(pos, a)
		}
	}
	if len(pos) != 2 {
		return x.Errorf(1, "syntax or usage error (code 1) (simulated: rsync [OPTIONS] SRC/ DST/)")
	}
	src, dst := strings.TrimSuffix(pos[0], "/"), strings.TrimSuffix(pos[1], "/")
	r.mu.Lock()
	f, srcOK := r.files[r.mounts[src]]
	dstDev, dstOK := r.mounts[dst]
	r.mu.Unlock()
	if !srcOK || !dstOK {
		return x.Errorf(23, "%s and %s must be a loop-mounted ISO and a mounted partition (simulated); some files/attrs were not transferred (code 23)", src, dst)
	}
	disk := x.DUT.Disk(dstDev)
	im, err := isoOf(f)
	if err != nil {
		return x.Errorf(23, "read errors mapping %q: %v (code 23)", src, err)
	}
	if del {
		for _, p := range x.DUT.Files() {
			if strings.HasPrefix(p, dst+"/") && !strings.HasPrefix(p, dst+"/efi/") {
				x.DUT.RemoveFile(p)
			}
		}
	}
	start := time.Now()
	n, err := disk.CopyTo(ctx, im.Reader(), 1<<20)
	if ctx.Err() != nil {
		fmt.Fprintln(x.Stderr, "rsync error: received SIGINT, SIGTERM, or SIGHUP (code 20)")
		return 20
	}
	if err != nil {
		reason := "Input/output error (5)"
		if errors.Is(err, io.ErrShortWrite) {
			reason = "No space left on device (28)"
		}
		fmt.Fprintf(x.Stderr, "rsync: [receiver] write failed on %q: %s\nrsync error: error in file IO (code 11) at receiver.c(380) [receiver=3.2.7]\n", dst+"/casper/filesystem.squashfs", reason)
		return 11
	}
	r.writeISOFiles(x.DUT, dst, im)
	if verbose {
		secs := max(time.Since(start).Seconds(), 1e-6)
		fmt.Fprintf(x.Stdout, "sent %d bytes  received 312 bytes  %.2f bytes/sec\n", n, float64(n)/secs)
	}
	return 0
}

// cp copies a file: cp [-r|-a|-f] SRC DST (DST ending with / is a directory).
func (r *Rig) cp(_ context.Context, x *sim.Exec) int {
	var pos []string
	for _, a := range x.Args[1:] {
		if !strings.HasPrefix(a, "-") {
			pos = append(pos, a)
		}
	}
	if len(pos) != 2 {
		return x.Errorf(1, "simulated: cp SRC DST")
	}
	b, ok := x.DUT.ReadFile(pos[0])
	if !ok {
		return x.Errorf(1, "cannot stat '%s': No such file or directory", pos[0])
	}
	dst := pos[1]
	if strings.HasSuffix(dst, "/") {
		dst += path.Base(pos[0])
	}
	x.DUT.WriteFile(dst, b)
	return 0
}

// chmod checks that each file exists: chmod MODE FILE...
func (r *Rig) chmod(_ context.Context, x *sim.Exec) int {
	if len(x.Args) < 3 {
		return x.Errorf(1, "missing operand")
	}
	for _, p := range x.Args[2:] {
		if _, ok := x.DUT.ReadFile(p); !ok && x.DUT.Disk(p) == nil {
			return x.Errorf(1, "cannot access '%s': No such file or directory", p)
		}
	}
	return 0
}

// fatlabel prints or sets the recovery partition's label: fatlabel DEV [LABEL].
func (r *Rig) fatlabel(_ context.Context, x *sim.Exec) int {
	if len(x.Args) < 2 || len(x.Args) > 3 {
		return x.Errorf(1, "usage: fatlabel DEVICE [NEW_LABEL]")
	}
	if x.Args[1] != RecoveryPartition {
		return x.Errorf(1, "%s: not a FAT file system this laptop has", x.Args[1])
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(x.Args) == 2 {
		fmt.Fprintln(x.Stdout, r.label)
		return 0
	}
	l := strings.ToUpper(x.Args[2])
	if len(l) > 11 {
		return x.Errorf(1, "label can be no longer than 11 characters")
	}
	r.label = l
	return 0
}

func (r *Rig) journalctl(_ context.Context, x *sim.Exec) int {
	fmt.Fprintln(x.Stdout, "Vacuuming done, freed 0B of archived journals from /var/log/journal.")
	return 0
}

// grubDefault matches a GRUB_DEFAULT assignment.
var grubDefault = regexp.MustCompile(`(?m)^\s*GRUB_DEFAULT=["']?([^"'\n]*)["']?\s*$`)

// updateGrub regenerates the GRUB menu: /etc/grub.d/99_ubuntu_recovery
// adds the recovery entry when it names the recovery partition's UUID, and
// GRUB_DEFAULT in /etc/default/grub.d/automatic-oem-config.cfg selects it.
func (r *Rig) updateGrub(_ context.Context, x *sim.Exec) int {
	entry, hasEntry := x.DUT.ReadFile("/etc/grub.d/99_ubuntu_recovery")
	cfg, _ := x.DUT.ReadFile("/etc/default/grub.d/automatic-oem-config.cfg")
	r.mu.Lock()
	defer r.mu.Unlock()
	if hasEntry {
		s := string(entry)
		r.grubEntry = strings.Contains(s, "menuentry") && strings.Contains(s, RecoveryEntry) && strings.Contains(s, RecoveryUUID)
	}
	if m := grubDefault.FindAllStringSubmatch(string(cfg), -1); len(m) > 0 && m[len(m)-1][1] == RecoveryEntry {
		r.recoveryNow = r.grubEntry
	}
	fmt.Fprintln(x.Stderr, "Sourcing file `/etc/default/grub'\nGenerating grub configuration file ...\ndone")
	return 0
}

// grubEditenv selects the next boot's entry: grub-editenv FILE set next_entry=NAME.
func (r *Rig) grubEditenv(_ context.Context, x *sim.Exec) int {
	if len(x.Args) != 4 || x.Args[2] != "set" {
		return x.Errorf(1, "simulated: grub-editenv FILE set next_entry=NAME")
	}
	name, ok := strings.CutPrefix(x.Args[3], "next_entry=")
	if !ok {
		return x.Errorf(1, "simulated: only next_entry is")
	}
	return r.selectNext(x, name)
}

// grubReboot selects the next boot's entry: grub-reboot NAME.
func (r *Rig) grubReboot(_ context.Context, x *sim.Exec) int {
	if len(x.Args) != 2 {
		return x.Errorf(1, "usage: grub-reboot MENU_ENTRY")
	}
	return r.selectNext(x, x.Args[1])
}

func (r *Rig) selectNext(x *sim.Exec, name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if name == RecoveryEntry && r.grubEntry {
		r.recoveryNow = true
	}
	return 0
}

// dellRestore starts dell-recovery: dell-restore-system -y.
func (r *Rig) dellRestore(_ context.Context, x *sim.Exec) int {
	if !slices.Contains(x.Args[1:], "-y") {
		fmt.Fprint(x.Stdout, "This will restore the system to its factory state. Continue? [y/N] ")
		return 1
	}
	if !x.Sudo {
		return x.Errorf(1, "must be run as root")
	}
	im, err := sim.Bootable(r.recovery.Last())
	if err != nil || im.Kind != "iso" {
		return x.Errorf(1, "no recovery image on %s", RecoveryPartition)
	}
	fmt.Fprintln(x.Stdout, "Rebooting into the recovery partition to restore the system")
	x.RebootAfter()
	r.startReinstall(x.DUT, ViaDell)
	return 0
}

// rebootCmd reboots, into the recovery when it was selected.
func (r *Rig) rebootCmd(_ context.Context, x *sim.Exec) int {
	r.mu.Lock()
	now := r.recoveryNow && r.dut == x.DUT
	r.mu.Unlock()
	x.RebootAfter()
	if now {
		r.startReinstall(x.DUT, ViaGRUB)
	}
	return 0
}

func (r *Rig) shutdown(ctx context.Context, x *sim.Exec) int {
	switch strings.Join(x.Args[1:], " ") {
	case "-r now":
		return r.rebootCmd(ctx, x)
	case "-h now", "-P now", "now":
		x.PowerOffAfter()
		return 0
	}
	return x.Errorf(1, "only -r now, -h now and now are simulated")
}

// systemctl answers is-active for ubiquity (active while the OEM
// configuration runs) and for other units (inactive).
func (r *Rig) systemctl(_ context.Context, x *sim.Exec) int {
	if len(x.Args) != 3 || x.Args[1] != "is-active" {
		return x.Errorf(1, "simulated: systemctl is-active UNIT")
	}
	if x.Args[2] == "ubiquity" && r.current(x) && r.oemState() {
		fmt.Fprintln(x.Stdout, "active")
		return 0
	}
	fmt.Fprintln(x.Stdout, "inactive")
	return 3
}

// snap answers snap model and snap changes.
func (r *Rig) snap(_ context.Context, x *sim.Exec) int {
	busy := r.current(x) && r.oemState()
	switch strings.Join(x.Args[1:], " ") {
	case "model":
		if busy {
			fmt.Fprintln(x.Stderr, "error: device not ready yet (no assertions found)")
			return 1
		}
		fmt.Fprintf(x.Stdout, "brand-id:  generic\nmodel:     generic-classic\nserial:    %s\n", r.opts.Name)
		return 0
	case "changes":
		status := "Done "
		if busy {
			status = "Doing"
		}
		fmt.Fprintln(x.Stdout, "ID   Status  Spawn               Ready               Summary")
		fmt.Fprintln(x.Stdout, "1    Done    today at 09:58 UTC  today at 09:59 UTC  Initialize system state")
		fmt.Fprintf(x.Stdout, "2    %s   today at 09:58 UTC  today at 10:00 UTC  Initialize device\n", status)
		return 0
	}
	fmt.Fprintf(x.Stderr, "error: unknown command %q, see 'snap help'.\n", strings.Join(x.Args[1:], " "))
	return 1
}

// aptGet purges ubiquity: apt-get [-o OPT] purge -y ubiquity. It waits
// for the OEM configuration (which holds the dpkg lock) to end.
func (r *Rig) aptGet(ctx context.Context, x *sim.Exec) int {
	if !slices.Contains(x.Args, "purge") || !slices.Contains(x.Args, "ubiquity") {
		return x.Errorf(100, "simulated: apt-get purge -y ubiquity")
	}
	for r.current(x) && r.oemState() {
		if sleep(ctx, 20*time.Millisecond) != nil {
			return 100
		}
	}
	r.mu.Lock()
	r.purged = r.dut == x.DUT
	r.mu.Unlock()
	fmt.Fprintln(x.Stdout, "Removing ubiquity (24.04.4) ...")
	return 0
}

// writable says where dd may create files.
func writable(p string) bool {
	for _, d := range []string{"/var/tmp/", "/tmp/", "/home/"} {
		if strings.HasPrefix(p, d) && len(p) > len(d) && !strings.HasSuffix(p, "/") {
			return true
		}
	}
	return false
}

// openFile is dd's Open on the laptop: a disk, or a file under /tmp,
// /var/tmp or /home (a disk of FreeSpace bytes created for it; with sudo
// but under /tmp).
func (r *Rig) openFile(x *sim.Exec, of string) (*sim.Disk, error) {
	if disk := x.DUT.Disk(of); disk != nil {
		return disk, nil
	}
	if !writable(of) || !x.Sudo && !strings.HasPrefix(of, "/tmp/") {
		return nil, fs.ErrPermission
	}
	disk := sim.NewDisk(of, r.opts.FreeSpace)
	x.DUT.AddDisk(of, disk)
	r.mu.Lock()
	r.files[of] = disk
	r.mu.Unlock()
	return disk, nil
}

// rm removes files, and files written with dd: rm [-f] [-r] [--] PATH...
func (r *Rig) rm(_ context.Context, x *sim.Exec) int {
	force, code := false, 0
	for _, a := range x.Args[1:] {
		if strings.HasPrefix(a, "-") {
			force = force || strings.Contains(a, "f")
			continue
		}
		_, isFile := x.DUT.ReadFile(a)
		r.mu.Lock()
		_, isDisk := r.files[a]
		delete(r.files, a)
		r.mu.Unlock()
		if isDisk {
			x.DUT.AddDisk(a, nil)
		}
		x.DUT.RemoveFile(a)
		if !isFile && !isDisk && !force {
			fmt.Fprintf(x.Stderr, "rm: cannot remove '%s': No such file or directory\n", a)
			code = 1
		}
	}
	return code
}

// scriptCount finds the length of the script sshx's script runner reads.
var scriptCount = regexp.MustCompile(`dd bs=1 count=(\d+)`)

// sh runs sshx's authorized_keys installer (sshx.InstallAuthorizedKeys):
// sh -c RUNNER NAME, the script then the keys on stdin. Any other script
// is refused, as the laptop has no shell.
func (r *Rig) sh(_ context.Context, x *sim.Exec) int {
	if len(x.Args) < 3 || x.Args[1] != "-c" {
		return x.Errorf(2, "only sshx's script runner is simulated")
	}
	m := scriptCount.FindStringSubmatch(x.Args[2])
	if m == nil {
		return x.Errorf(2, "only sshx's script runner is simulated")
	}
	n, _ := strconv.Atoi(m[1])
	script := make([]byte, n)
	if _, err := io.ReadFull(x.Stdin, script); err != nil {
		fmt.Fprintln(x.Stderr, "flinger: the script did not arrive in full")
		return 125
	}
	if !strings.Contains(string(script), "authorized_keys") || !strings.Contains(string(script), "read -r blob line") {
		return x.Errorf(127, "only the authorized_keys installer is simulated")
	}
	const file = "/home/" + DefaultUser + "/.ssh/authorized_keys"
	old, _ := x.DUT.ReadFile(file)
	added := 0
	sc := bufio.NewScanner(x.Stdin)
	for sc.Scan() {
		_, line, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return x.Errorf(1, "bad key: %v", err)
		}
		if strings.Contains(string(old), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))) {
			continue
		}
		old = append(old, line+"\n"...)
		added++
		r.mu.Lock()
		if r.dut == x.DUT {
			r.injected = append(r.injected, line)
		}
		r.mu.Unlock()
	}
	x.DUT.WriteFile(file, old)
	fmt.Fprintln(x.Stdout, added)
	return 0
}
