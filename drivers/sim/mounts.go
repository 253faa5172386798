package sim

import (
	"context"
	"fmt"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Partition is one partition of a simulated image, as a host that mounts
// it sees it.
type Partition struct {
	// Label is the file system's label (lsblk's LABEL).
	Label string
	// Dirs are top-level entries of the file system that ls lists at its
	// root besides those of Files: the directories of a root file system
	// that nothing looks into.
	Dirs []string
	// Files are the files a provisioning path reads or changes, by path
	// relative to the root (a directory exists when a file is under it).
	Files map[string][]byte
}

func (p Partition) clone() Partition {
	p.Dirs = slices.Clone(p.Dirs)
	p.Files = maps.Clone(p.Files)
	if p.Files == nil {
		p.Files = map[string][]byte{}
	}
	return p
}

// RootDirs are the top-level directories of a classic Ubuntu root file
// system, for a layout's Partition.Dirs.
var RootDirs = []string{"bin", "boot", "dev", "etc", "home", "lib", "media", "mnt", "opt", "proc", "root", "run", "sbin", "snap", "srv", "sys", "tmp", "usr", "var"}

// PartitionNode returns the device node of partition n (from 1) of the
// disk whose node is dev, as the kernel names it: /dev/sda2 for /dev/sda,
// /dev/mmcblk1p2 for /dev/mmcblk1 (a name ending with a digit takes a p).
func PartitionNode(dev string, n int) string {
	if dev != "" && dev[len(dev)-1] >= '0' && dev[len(dev)-1] <= '9' {
		return dev + "p" + strconv.Itoa(n)
	}
	return dev + strconv.Itoa(n)
}

// Volume is the partitions of what a Disk holds, as layout lays out the
// simulated image last written to it, with the changes made to their
// files while they were mounted (see Mounts). Writing the disk again
// starts from the new image's layout. A disk that holds no complete
// image (see Bootable) has no partitions. Its methods are safe for
// concurrent use.
type Volume struct {
	disk   *Disk
	layout func(Image) []Partition

	mu    sync.Mutex
	key   string // the write parts were made from
	parts []Partition
}

// NewVolume returns the Volume of disk; layout gives the partitions of
// an image (it is called again after each write).
func NewVolume(disk *Disk, layout func(Image) []Partition) *Volume {
	return &Volume{disk: disk, layout: layout}
}

// Disk returns the volume's disk.
func (v *Volume) Disk() *Disk { return v.disk }

// Partitions returns the partitions of what the disk holds, in order, as
// the last unmount of each left them (copies); none when the disk holds
// no complete image.
func (v *Volume) Partitions() []Partition {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.refreshLocked()
	var out []Partition
	for _, p := range v.parts {
		out = append(out, p.clone())
	}
	return out
}

// writeKey identifies a disk's last write, complete or not.
func writeKey(d *Disk) string {
	w := d.Last()
	return fmt.Sprintf("%d/%d/%t/%s", d.Writes(), w.Bytes, w.Complete, w.SHA256)
}

// refreshLocked makes the partitions anew from what the disk holds when
// it was written since they were last made.
func (v *Volume) refreshLocked() {
	key := writeKey(v.disk)
	if key == v.key {
		return
	}
	v.key, v.parts = key, nil
	if im, err := Bootable(v.disk.Last()); err == nil {
		for _, p := range v.layout(im) {
			v.parts = append(v.parts, p.clone())
		}
	}
}

// partition returns partition n (from 1) as it is now, and the write it
// belongs to.
func (v *Volume) partition(n int) (Partition, string, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.refreshLocked()
	if n < 1 || n > len(v.parts) {
		return Partition{}, v.key, false
	}
	return v.parts[n-1].clone(), v.key, true
}

// store replaces the files of partition n, unless the disk was written
// since the write key.
func (v *Volume) store(key string, n int, files map[string][]byte) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.refreshLocked()
	if key == v.key && n >= 1 && n <= len(v.parts) {
		v.parts[n-1].Files = files
	}
}

// hostDirs are the directories every host has, whatever files it holds.
var hostDirs = []string{"/", "/mnt", "/tmp"}

// pathKind reports whether p is a file of the DUT, or a directory: one
// that a file is under, or one of those every host has (/, /mnt, /tmp).
func (d *DUT) pathKind(p string) (file, dir bool) {
	p = path.Clean(p)
	if _, ok := d.ReadFile(p); ok {
		return true, false
	}
	if slices.Contains(hostDirs, p) {
		return false, true
	}
	prefix := strings.TrimSuffix(p, "/") + "/"
	for _, f := range d.Files() {
		if strings.HasPrefix(f, prefix) {
			return false, true
		}
	}
	return false, false
}

// testPath runs x, test EXPR or [ EXPR ], with EXPR one of -e, -f, -d and
// -b PATH, as a real test: -f is true of files only, -b of disks only;
// kind says what else PATH is.
func testPath(x *Exec, kind func(p string) (file, dir bool)) int {
	args := x.Args[1:]
	if x.Args[0] == "[" {
		if len(args) == 0 || args[len(args)-1] != "]" {
			return x.Errorf(2, "missing ]")
		}
		args = args[:len(args)-1]
	}
	if len(args) != 2 {
		return x.Errorf(2, "only -e, -f, -d and -b PATH are simulated")
	}
	file, dir := kind(args[1])
	disk := x.DUT.Disk(args[1]) != nil
	var ok bool
	switch args[0] {
	case "-e":
		ok = file || dir || disk
	case "-f":
		ok = file
	case "-d":
		ok = dir
	case "-b":
		ok = disk
	default:
		return x.Errorf(2, "%s: only -e, -f, -d and -b PATH are simulated", args[0])
	}
	if ok {
		return 0
	}
	return 1
}

// Mount is a partition mounted on a host.
type Mount struct {
	// Dir is the mount point.
	Dir string
	// Node is the partition's device node, as given to mount.
	Node string
	// Volume holds the partition, N is its number (from 1).
	Volume *Volume
	N      int

	key string // the volume's write when it was mounted
}

// Mounts is the mount table of a simulated host (a DUT) and the commands
// that see it. Mounting a partition of a Volume on a directory puts the
// partition's files there (as the host's files under the directory);
// unmounting it takes what is there back to the partition (unless its
// disk was written since) and off the host. Its methods are safe for
// concurrent use.
//
// The commands (Install) are, each with or without sudo:
//
//	mount [-o OPTIONS] [-t TYPE] DEVICE DIR   (sudo)
//	umount [-l] [-f] DIR|DEVICE...            (sudo)
//	ls [-1] [-a] [DIR|FILE]                   one entry a line
//	test -e|-f|-d|-b PATH, [ -e|-f|-d|-b PATH ]
//	cp [-a|-r|-p|-f] SRC DST                  DST may be a directory
//	chmod MODE PATH...                        the paths must exist; modes are not kept
//
// A directory exists when a file is under it, when it is a mount point,
// or when it is one of /, /mnt and /tmp. test -f is true of files only,
// test -b of disks only (see DUT.AddDisk).
type Mounts struct {
	host    *DUT
	resolve func(node string) (*Volume, int, bool)

	mu    sync.Mutex
	byDir map[string]*Mount
}

// NewMounts returns the mount table of host; resolve returns the volume
// and the partition number (from 1) of a device node that mount may
// mount (such as /dev/sda2), or false.
func NewMounts(host *DUT, resolve func(node string) (*Volume, int, bool)) *Mounts {
	return &Mounts{host: host, resolve: resolve, byDir: map[string]*Mount{}}
}

// Install adds the commands (see Mounts) to the host.
func (m *Mounts) Install() {
	for name, cmd := range map[string]Command{
		"mount":  m.mountCmd,
		"umount": m.umountCmd,
		"ls":     m.ls,
		"test":   m.test,
		"[":      m.test,
		"cp":     m.cp,
		"chmod":  m.chmod,
	} {
		m.host.Handle(name, cmd)
	}
}

// List returns the mounts, by mount point.
func (m *Mounts) List() []Mount {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Mount, 0, len(m.byDir))
	for _, dir := range slices.Sorted(maps.Keys(m.byDir)) {
		out = append(out, *m.byDir[dir])
	}
	return out
}

// UnmountVolume unmounts every partition of v (its disk leaves the host).
func (m *Mounts) UnmountVolume(v *Volume) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, dir := range slices.Sorted(maps.Keys(m.byDir)) {
		if m.byDir[dir].Volume == v {
			m.unmountLocked(dir)
		}
	}
}

// UnmountAll unmounts everything (the host reboots).
func (m *Mounts) UnmountAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, dir := range slices.Sorted(maps.Keys(m.byDir)) {
		m.unmountLocked(dir)
	}
}

// PartitionFiles returns the files of partition n (from 1) of v as the
// host sees them, by path relative to the partition's root: those under
// its mount point while it is mounted (and its disk was not written
// since), else those the volume holds. It is nil when v has no
// partition n.
func (m *Mounts) PartitionFiles(v *Volume, n int) map[string][]byte {
	p, key, ok := v.partition(n)
	if !ok {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, mt := range m.byDir {
		if mt.Volume == v && mt.N == n && mt.key == key {
			return m.filesUnder(mt.Dir, false)
		}
	}
	return p.Files
}

// filesUnder returns the host's files under dir, by path relative to it,
// and removes them from the host when take is set.
func (m *Mounts) filesUnder(dir string, take bool) map[string][]byte {
	files := map[string][]byte{}
	for _, p := range m.host.Files() {
		if rel, ok := strings.CutPrefix(p, strings.TrimSuffix(dir, "/")+"/"); ok {
			files[rel], _ = m.host.ReadFile(p)
			if take {
				m.host.RemoveFile(p)
			}
		}
	}
	return files
}

// unmountLocked unmounts dir: what is under it goes back to the
// partition (unless the disk was written since) and leaves the host.
func (m *Mounts) unmountLocked(dir string) {
	mt := m.byDir[dir]
	delete(m.byDir, dir)
	files := m.filesUnder(dir, true)
	if mt != nil {
		mt.Volume.store(mt.key, mt.N, files)
	}
}

// mountCmd: mount [-o OPTIONS] [-t TYPE] DEVICE DIR.
func (m *Mounts) mountCmd(_ context.Context, x *Exec) int {
	var pos []string
	args := x.Args[1:]
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "-o" || a == "-t":
			i++
		case strings.HasPrefix(a, "-"):
		default:
			pos = append(pos, a)
		}
	}
	if len(pos) != 2 {
		return x.Errorf(1, "only mount [-o OPTIONS] [-t TYPE] DEVICE DIR is simulated")
	}
	if !x.Sudo {
		return x.Errorf(32, "must be superuser to use mount.")
	}
	node, dir := pos[0], path.Clean(pos[1])
	v, n, ok := m.resolve(node)
	var p Partition
	var key string
	if ok {
		p, key, ok = v.partition(n)
	}
	if !ok {
		return x.Errorf(32, "%s: special device %s does not exist.", dir, node)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if mt, busy := m.byDir[dir]; busy {
		return x.Errorf(32, "%s: %s already mounted or mount point busy (%s is there).", dir, node, mt.Node)
	}
	for _, mt := range m.byDir {
		if mt.Volume == v && mt.N == n {
			return x.Errorf(32, "%s: %s already mounted on %s.", dir, node, mt.Dir)
		}
	}
	for rel, b := range p.Files {
		m.host.WriteFile(dir+"/"+rel, b)
	}
	m.byDir[dir] = &Mount{Dir: dir, Node: node, Volume: v, N: n, key: key}
	return 0
}

// umountCmd: umount [-l] [-f] DIR|DEVICE...
func (m *Mounts) umountCmd(_ context.Context, x *Exec) int {
	if !x.Sudo {
		return x.Errorf(32, "must be superuser to unmount.")
	}
	var targets []string
	for _, a := range x.Args[1:] {
		if !strings.HasPrefix(a, "-") {
			targets = append(targets, a)
		}
	}
	if len(targets) == 0 {
		return x.Errorf(1, "only umount DIR|DEVICE... is simulated")
	}
	code := 0
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, a := range targets {
		dir := ""
		for d, mt := range m.byDir {
			if d == path.Clean(a) || mt.Node == a || mt.Node == path.Clean(a) {
				dir = d
			}
		}
		if dir == "" {
			fmt.Fprintf(x.Stderr, "umount: %s: not mounted.\n", a)
			code = 32
			continue
		}
		m.unmountLocked(dir)
	}
	return code
}

// entries returns the names directly under dir: those of the host's
// files, and the Dirs of the partition mounted there; sorted.
func (m *Mounts) entries(dir string) []string {
	var names []string
	m.mu.Lock()
	if mt, ok := m.byDir[dir]; ok {
		if p, _, ok := mt.Volume.partition(mt.N); ok {
			names = append(names, p.Dirs...)
		}
	}
	m.mu.Unlock()
	prefix := strings.TrimSuffix(dir, "/") + "/"
	for _, f := range m.host.Files() {
		if rest, ok := strings.CutPrefix(f, prefix); ok && rest != "" {
			name, _, _ := strings.Cut(rest, "/")
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// kind reports whether p is a file or a directory of the host: a
// directory as DUT.pathKind says, or a mount point.
func (m *Mounts) kind(p string) (file, dir bool) {
	if file, dir = m.host.pathKind(p); file || dir {
		return file, dir
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	_, mounted := m.byDir[path.Clean(p)]
	return false, mounted
}

// ls: ls [-1] [-a] [DIR|FILE], one entry a line.
func (m *Mounts) ls(_ context.Context, x *Exec) int {
	var pos []string
	for _, a := range x.Args[1:] {
		if !strings.HasPrefix(a, "-") {
			pos = append(pos, a)
		}
	}
	if len(pos) > 1 {
		return x.Errorf(2, "only ls [DIR] is simulated")
	}
	arg := "."
	if len(pos) == 1 {
		arg = pos[0]
	}
	p := path.Clean(arg)
	file, dir := m.kind(p)
	switch {
	case file:
		fmt.Fprintln(x.Stdout, p)
	case dir:
		for _, e := range m.entries(p) {
			fmt.Fprintln(x.Stdout, e)
		}
	default:
		return x.Errorf(2, "cannot access '%s': No such file or directory", arg)
	}
	return 0
}

// test: test -e|-f|-d|-b PATH, and [ ... ].
func (m *Mounts) test(_ context.Context, x *Exec) int {
	return testPath(x, m.kind)
}

// cp: cp [-a|-r|-p|-f] SRC DST, DST a file or a directory.
func (m *Mounts) cp(_ context.Context, x *Exec) int {
	var pos []string
	for _, a := range x.Args[1:] {
		if !strings.HasPrefix(a, "-") {
			pos = append(pos, a)
		}
	}
	if len(pos) != 2 {
		return x.Errorf(1, "only cp SRC DST is simulated")
	}
	src, dst := path.Clean(pos[0]), path.Clean(pos[1])
	b, ok := m.host.ReadFile(src)
	if !ok {
		return x.Errorf(1, "cannot stat '%s': No such file or directory", pos[0])
	}
	if _, dir := m.kind(dst); dir || strings.HasSuffix(pos[1], "/") {
		dst = strings.TrimSuffix(dst, "/") + "/" + path.Base(src)
	}
	m.host.WriteFile(dst, b)
	return 0
}

// chmod: chmod MODE PATH..., each path a file, a directory or a disk.
func (m *Mounts) chmod(_ context.Context, x *Exec) int {
	if len(x.Args) < 3 {
		return x.Errorf(1, "missing operand (simulated: chmod MODE PATH...)")
	}
	for _, p := range x.Args[2:] {
		if file, dir := m.kind(p); !file && !dir && m.host.Disk(p) == nil {
			return x.Errorf(1, "cannot access '%s': No such file or directory", p)
		}
	}
	return 0
}
