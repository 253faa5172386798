package maas2

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/maas2/maasapi"
	"github.com/flingerlab/flinger/events"
)

// MAAS's storage arithmetic (maasserver/models/partitiontable.py and
// partition.py): a partition table keeps 5 MiB of its disk, and partitions
// are rounded up to 4 MiB.
const (
	partitionTableExtraSpace = 5 << 20
	partitionAlignment       = 4 << 20
)

// The types of a storage layout's entries (Testflinger's maas_storage).
const (
	entryDisk      = "disk"
	entryPartition = "partition"
	entryFormat    = "format"
	entryMount     = "mount"
)

var entryTypes = []string{entryDisk, entryPartition, entryFormat, entryMount}

// Filesystems lists the fstype values a format entry may give: those MAAS
// formats block devices and partitions with.
var Filesystems = []string{"ext2", "ext4", "xfs", "fat32", "vfat", "swap", "btrfs", "zfsroot"}

// LayoutError reports a storage layout entry that cannot be applied.
type LayoutError struct {
	// Source is where the layout comes from: provision_data.disks or
	// default_disks.
	Source string
	// Index is the entry's index in the list (-1: the layout as a whole).
	Index int
	// ID is the entry's id, if it has one.
	ID string
	// Msg says what is wrong.
	Msg string
}

func (e *LayoutError) Error() string {
	return where(e.Source, e.Index, e.ID) + ": " + e.Msg
}

// where names an entry of a layout: source[index] (id).
func where(source string, index int, id string) string {
	w := source
	if index >= 0 {
		w += "[" + strconv.Itoa(index) + "]"
	}
	if id != "" {
		w += " (" + display.Printable(id) + ")"
	}
	return w
}

// entry is one entry of a storage layout.
type entry struct {
	index int
	id    string
	typ   string

	// disk
	name   string
	ptable string
	boot   bool

	// partition: device; mount: device (a format entry)
	device   string
	number   int   // 0: not given
	size     int64 // 0: not given
	allocPct int   // 0: not given

	// format
	volume, fstype, label string

	// mount
	path string
}

// layout is a storage layout, checked.
type layout struct {
	source  string
	entries []*entry
	byID    map[string]*entry
}

func (l *layout) errorf(e *entry, format string, args ...any) error {
	le := &LayoutError{Source: l.source, Index: -1, Msg: fmt.Sprintf(format, args...)}
	if e != nil {
		le.Index, le.ID = e.index, e.id
	}
	return le
}

// parseLayout reads and checks a storage layout (a list of entries in
// Testflinger's format) from source. Every reference must name an entry
// of the right type; sizes, percentages and filesystems must be valid; a
// volume is formatted and a filesystem mounted at most once; unless
// ephemeral, a filesystem must be mounted on /.
func parseLayout(v any, source string, ephemeral bool) (*layout, error) {
	l := &layout{source: source, byID: map[string]*entry{}}
	list, ok := v.([]any)
	if !ok {
		return nil, l.errorf(nil, "must be a list of disk, partition, format and mount entries, got %s", events.TypeName(v))
	}
	for i, raw := range list {
		m, ok := raw.(map[string]any)
		if !ok {
			return nil, &LayoutError{Source: source, Index: i, Msg: "must be a mapping, got " + events.TypeName(raw)}
		}
		e, err := l.parseEntry(i, events.Data(m))
		if err != nil {
			return nil, err
		}
		if prev, dup := l.byID[e.id]; dup {
			return nil, l.errorf(e, "id is also the id of entry %d", prev.index)
		}
		l.byID[e.id] = e
		l.entries = append(l.entries, e)
	}
	if err := l.check(ephemeral); err != nil {
		return nil, err
	}
	return l, nil
}

// idValue reads an id or a reference: a string, or a number (YAML makes
// `id: 1` a number).
func idValue(d events.Data, key string) (string, bool, error) {
	v, ok := d[key]
	if !ok || v == nil {
		return "", false, nil
	}
	switch x := v.(type) {
	case string:
		if x == "" {
			return "", true, fmt.Errorf("%s: must not be empty", key)
		}
		return x, true, nil
	default:
		if n, ok := events.AsInt(v); ok {
			return strconv.Itoa(n), true, nil
		}
	}
	return "", true, fmt.Errorf("%s: must be a string, got %s", key, events.TypeName(v))
}

// parseEntry reads one entry.
func (l *layout) parseEntry(i int, d events.Data) (*entry, error) {
	e := &entry{index: i}
	fail := func(format string, args ...any) error {
		return &LayoutError{Source: l.source, Index: i, ID: e.id, Msg: fmt.Sprintf(format, args...)}
	}
	id, ok, err := idValue(d, "id")
	if err != nil {
		return nil, fail("%v", err)
	}
	if !ok {
		return nil, fail("id: required")
	}
	e.id = id
	if e.typ, err = d.String("type", ""); err != nil {
		return nil, fail("%v", err)
	}
	switch e.typ {
	case "":
		return nil, fail("type: required (one of %s)", strings.Join(entryTypes, ", "))
	case entryDisk:
		if e.name, err = d.String("name", ""); err != nil {
			return nil, fail("%v", err)
		}
		if strings.ContainsFunc(e.name, func(r rune) bool { return r == '/' || unicode.IsSpace(r) || unicode.IsControl(r) }) {
			return nil, fail("name: %s must not contain '/', spaces or control characters", display.Printable(e.name))
		}
		if e.ptable, err = d.String("ptable", ""); err != nil {
			return nil, fail("%v", err)
		}
		if p := strings.ToLower(e.ptable); p != "" && p != "gpt" && p != "msdos" {
			return nil, fail("ptable: %s is neither gpt nor msdos", display.Printable(e.ptable))
		}
		if e.boot, err = d.Bool("boot", false); err != nil {
			return nil, fail("%v", err)
		}
	case entryPartition:
		if e.device, ok, err = idValue(d, "device"); err != nil || !ok {
			return nil, fail("device: %s", orRequired(err, "required (the id of the disk entry the partition is on)"))
		}
		if v, ok := d["number"]; ok && v != nil {
			n, isInt := events.AsInt(v)
			if !isInt || n < 1 || n > 128 {
				return nil, fail("number: must be a whole number from 1 to 128, got %v", printableValue(v))
			}
			e.number = n
		}
		if v, ok := d["size"]; ok && v != nil {
			n, err := parseSize(v)
			if err != nil {
				return nil, fail("size: %v", err)
			}
			e.size = n
		}
		if v, ok := d["alloc_pct"]; ok && v != nil {
			n, isInt := events.AsInt(v)
			if !isInt || n < 1 || n > 100 {
				return nil, fail("alloc_pct: must be a whole number from 1 to 100, got %v", printableValue(v))
			}
			e.allocPct = n
		}
		if e.size == 0 && e.allocPct == 0 {
			return nil, fail("a partition needs a size or an alloc_pct")
		}
	case entryFormat:
		if e.volume, ok, err = idValue(d, "volume"); err != nil || !ok {
			return nil, fail("volume: %s", orRequired(err, "required (the id of the partition or disk entry to format)"))
		}
		if e.fstype, err = d.String("fstype", ""); err != nil {
			return nil, fail("%v", err)
		}
		if e.fstype == "" {
			return nil, fail("fstype: required (one of %s)", strings.Join(Filesystems, ", "))
		}
		if !slices.Contains(Filesystems, e.fstype) {
			return nil, fail("fstype: unknown filesystem %s (MAAS formats with %s)", display.Printable(e.fstype), strings.Join(Filesystems, ", "))
		}
		if e.label, err = d.String("label", ""); err != nil {
			return nil, fail("%v", err)
		}
	case entryMount:
		if e.device, ok, err = idValue(d, "device"); err != nil || !ok {
			return nil, fail("device: %s", orRequired(err, "required (the id of the format entry to mount)"))
		}
		if e.path, err = d.String("path", ""); err != nil {
			return nil, fail("%v", err)
		}
		switch {
		case e.path == "":
			return nil, fail("path: required (where to mount, such as /)")
		case !strings.HasPrefix(e.path, "/") || strings.ContainsFunc(e.path, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
			return nil, fail("path: %s is not an absolute path without spaces", display.Printable(e.path))
		}
	default:
		return nil, fail("type: unknown type %s (known: %s; RAID, LVM and bcache are not supported, as in Testflinger)",
			display.Printable(e.typ), strings.Join(entryTypes, ", "))
	}
	return e, nil
}

func orRequired(err error, required string) string {
	if err != nil {
		return strings.TrimPrefix(strings.TrimPrefix(err.Error(), "device: "), "volume: ")
	}
	return required
}

// check checks the references between entries and what the layout asks
// of each disk.
func (l *layout) check(ephemeral bool) error {
	formatted := map[string]*entry{} // volume id -> format entry
	mounted := map[string]*entry{}   // format id -> mount entry
	paths := map[string]*entry{}
	numbers := map[string]map[int]*entry{}
	pct := map[string]int{}
	for _, e := range l.entries {
		switch e.typ {
		case entryPartition:
			target := l.byID[e.device]
			if target == nil || target.typ != entryDisk {
				return l.errorf(e, "device: %s is not the id of a disk entry", l.describeRef(e.device))
			}
			if e.number > 0 {
				if numbers[e.device] == nil {
					numbers[e.device] = map[int]*entry{}
				}
				if prev := numbers[e.device][e.number]; prev != nil {
					return l.errorf(e, "number: %d is also the number of entry %d on disk %s", e.number, prev.index, display.Printable(e.device))
				}
				numbers[e.device][e.number] = e
			}
			pct[e.device] += e.allocPct
			if pct[e.device] > 100 {
				return l.errorf(target, "the alloc_pct of its partitions add up to %d, more than 100", pct[e.device])
			}
		case entryFormat:
			target := l.byID[e.volume]
			if target == nil || (target.typ != entryPartition && target.typ != entryDisk) {
				return l.errorf(e, "volume: %s is not the id of a partition or disk entry", l.describeRef(e.volume))
			}
			if prev := formatted[e.volume]; prev != nil {
				return l.errorf(e, "volume: %s is already formatted by entry %d", display.Printable(e.volume), prev.index)
			}
			formatted[e.volume] = e
		case entryMount:
			target := l.byID[e.device]
			if target == nil || target.typ != entryFormat {
				return l.errorf(e, "device: %s is not the id of a format entry", l.describeRef(e.device))
			}
			if prev := mounted[e.device]; prev != nil {
				return l.errorf(e, "device: %s is already mounted by entry %d", display.Printable(e.device), prev.index)
			}
			mounted[e.device] = e
			if prev := paths[e.path]; prev != nil {
				return l.errorf(e, "path: %s is also the path of entry %d", e.path, prev.index)
			}
			paths[e.path] = e
			if l.byID[e.device].fstype == "swap" {
				return l.errorf(e, "device: %s is swap, which is not mounted on a path", display.Printable(e.device))
			}
		}
	}
	for _, e := range l.entries {
		if e.typ == entryFormat && l.byID[e.volume].typ == entryDisk && len(l.partitionsOf(e.volume)) > 0 {
			return l.errorf(e, "volume: disk %s has partitions; format them, not the whole disk", display.Printable(e.volume))
		}
	}
	if !ephemeral && len(l.entries) > 0 && paths["/"] == nil {
		return l.errorf(nil, "no mount entry has path /: MAAS cannot deploy a machine without a root filesystem")
	}
	return nil
}

// describeRef names a reference that does not resolve as wanted.
func (l *layout) describeRef(id string) string {
	if e := l.byID[id]; e != nil {
		return fmt.Sprintf("%s (a %s entry)", display.Printable(id), e.typ)
	}
	return fmt.Sprintf("%s (no entry has this id)", display.Printable(id))
}

// disks returns the layout's disk entries, in order.
func (l *layout) disks() []*entry {
	var out []*entry
	for _, e := range l.entries {
		if e.typ == entryDisk {
			out = append(out, e)
		}
	}
	return out
}

// partitionsOf returns the partition entries of disk entry id, in the
// order they are created: by number when given (those without a number
// after, in the layout's order).
func (l *layout) partitionsOf(id string) []*entry {
	var out []*entry
	for _, e := range l.entries {
		if e.typ == entryPartition && e.device == id {
			out = append(out, e)
		}
	}
	slices.SortStableFunc(out, func(a, b *entry) int {
		an, bn := a.number, b.number
		if an == 0 {
			an = math.MaxInt
		}
		if bn == 0 {
			bn = math.MaxInt
		}
		return cmp.Compare(an, bn)
	})
	return out
}

// diskOf returns the disk entry a partition, format or mount entry is on.
func (l *layout) diskOf(e *entry) *entry {
	for range len(l.entries) {
		switch e.typ {
		case entryDisk:
			return e
		case entryPartition, entryMount:
			e = l.byID[e.device]
		case entryFormat:
			e = l.byID[e.volume]
		}
	}
	return nil
}

// bootDisk reports whether disk entry d should be the boot disk: it says
// boot: true, or a filesystem on it is mounted under /boot.
func (l *layout) bootDisk(d *entry) bool {
	if d.boot {
		return true
	}
	for _, e := range l.entries {
		if e.typ == entryMount && strings.Contains(e.path, "/boot") && l.diskOf(e) == d {
			return true
		}
	}
	return false
}

var sizeRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(B?)$`)

// parseSize reads a size as Testflinger's maas_storage does: bytes, or a
// number with K, M, G or T (powers of 1000; a trailing B is allowed, and
// so is a decimal point).
func parseSize(v any) (int64, error) {
	if n, ok := events.AsInt(v); ok {
		if n <= 0 {
			return 0, fmt.Errorf("%d is not a size in bytes (more than 0)", n)
		}
		return int64(n), nil
	}
	s, ok := v.(string)
	if !ok {
		return 0, fmt.Errorf("must be a size such as 500M, 20G or a number of bytes, got %s", events.TypeName(v))
	}
	m := sizeRE.FindStringSubmatch(strings.ToUpper(strings.TrimSpace(s)))
	if m == nil {
		return 0, fmt.Errorf("%s is not a size such as 500M, 20G, 1.5T or a number of bytes", display.Printable(s))
	}
	f, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("%s is not a size: %w", display.Printable(s), err)
	}
	mult := map[string]float64{"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}[m[2]]
	n := math.Round(f * mult)
	if n < 1 || n > 1<<60 {
		return 0, fmt.Errorf("%s is out of range", display.Printable(s))
	}
	return int64(n), nil
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// need returns the bytes disk entry d needs: its partitions' sizes as MAAS
// will round them, with the partition table.
func (l *layout) need(d *entry) int64 {
	parts := l.partitionsOf(d.id)
	if len(parts) == 0 {
		return 0
	}
	n := int64(partitionTableExtraSpace)
	for _, p := range parts {
		n += roundUp(max(p.size, partitionAlignment), partitionAlignment)
	}
	return n
}

// plan is a layout matched to a machine's disks.
type plan struct {
	l *layout
	// disk maps each disk entry to the machine's disk it is applied to.
	disk map[*entry]maasapi.BlockDevice
	// size is the size of each partition entry.
	size map[*entry]int64
}

// describeDisks lists a machine's physical disks for messages.
func describeDisks(devs []maasapi.BlockDevice) string {
	var parts []string
	for _, d := range devs {
		parts = append(parts, fmt.Sprintf("%s %s", d.Name, d.Size))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// plan matches the layout's disk entries to the machine's physical disks
// (devs, in MAAS's order) and sizes its partitions. Each disk entry takes
// the first free disk big enough for its partitions, as in Testflinger,
// other choices being tried when that leaves a later entry without one.
func (l *layout) plan(devs []maasapi.BlockDevice, node string) (*plan, error) {
	var physical []maasapi.BlockDevice
	for _, d := range devs {
		if d.Physical() {
			physical = append(physical, d)
		}
	}
	slices.SortStableFunc(physical, func(a, b maasapi.BlockDevice) int { return cmp.Compare(a.ID, b.ID) })
	disks := l.disks()
	have := fmt.Sprintf("machine %s has %s", node, describeDisks(physical))
	if len(disks) > len(physical) {
		return nil, l.errorf(disks[len(physical)], "the layout has %d disk entries and %s", len(disks), have)
	}
	var largest maasapi.Bytes
	for _, d := range physical {
		largest = max(largest, d.Size)
	}
	for _, d := range disks {
		if need := maasapi.Bytes(l.need(d)); need > largest {
			return nil, l.errorf(d, "its partitions need %s (with the partition table) and %s: none is big enough", need, have)
		}
	}
	chosen := make([]int, len(disks))
	used := make([]bool, len(physical))
	var match func(i int) bool
	match = func(i int) bool {
		if i == len(disks) {
			return true
		}
		need := l.need(disks[i])
		for j, dev := range physical {
			if used[j] || int64(dev.Size) < need {
				continue
			}
			used[j], chosen[i] = true, j
			if match(i + 1) {
				return true
			}
			used[j] = false
		}
		return false
	}
	if !match(0) {
		var needs []string
		for _, d := range disks {
			needs = append(needs, fmt.Sprintf("%s needs %s", display.Printable(d.id), maasapi.Bytes(l.need(d))))
		}
		return nil, l.errorf(nil, "the disk entries do not fit the machine's disks together (%s); %s", strings.Join(needs, ", "), have)
	}
	p := &plan{l: l, disk: map[*entry]maasapi.BlockDevice{}, size: map[*entry]int64{}}
	for i, d := range disks {
		dev := physical[chosen[i]]
		p.disk[d] = dev
		usable := int64(dev.Size) - partitionTableExtraSpace
		var total int64
		for _, part := range l.partitionsOf(d.id) {
			size := roundUp(max(part.size, partitionAlignment), partitionAlignment)
			if part.allocPct > 0 {
				pct := usable * int64(part.allocPct) / 100 / partitionAlignment * partitionAlignment
				size = max(size, pct)
			}
			p.size[part] = size
			total += size
		}
		if total > usable {
			return nil, l.errorf(d, "its partitions take %s and disk %s of machine %s holds %s of partitions",
				maasapi.Bytes(total), dev.Name, node, maasapi.Bytes(usable))
		}
	}
	return p, nil
}

// apply writes the plan to the machine, which must be Ready: the
// machine's storage configuration is cleared, then the disks are set up
// (boot disk, name), the partitions created, formatted and mounted, in
// that order, as Testflinger does.
func (s *session) applyLayout(ctx context.Context, p *plan) error {
	l := p.l
	s.printf("Storage: clearing the machine's storage configuration")
	if err := s.clearStorage(ctx); err != nil {
		return err
	}
	fail := func(e *entry, err error) error {
		return fmt.Errorf("applying the storage layout: %s: %w", where(l.source, e.index, e.id), err)
	}
	partitionIDs := map[*entry]int{}
	for _, d := range l.disks() {
		dev := p.disk[d]
		s.printf("Storage: %s is disk %s (id %d, %s)", display.Printable(d.id), dev.Name, dev.ID, dev.Size)
		if l.bootDisk(d) {
			s.printf("Storage: %s is the boot disk", dev.Name)
			if err := s.api.SetBootDisk(ctx, s.node, dev.ID); err != nil {
				return fail(d, err)
			}
		}
		if d.name != "" && d.name != dev.Name {
			s.printf("Storage: naming %s %s", dev.Name, display.Printable(d.name))
			if err := s.api.RenameBlockDevice(ctx, s.node, dev.ID, d.name); err != nil {
				return fail(d, err)
			}
		}
	}
	for _, d := range l.disks() {
		dev := p.disk[d]
		for _, part := range l.partitionsOf(d.id) {
			created, err := s.api.CreatePartition(ctx, s.node, dev.ID, p.size[part])
			if err != nil {
				return fail(part, err)
			}
			partitionIDs[part] = created.ID
			s.printf("Storage: partition %s on %s: %s (id %d)", display.Printable(part.id), dev.Name, created.Size, created.ID)
		}
	}
	for _, e := range l.entries {
		if e.typ != entryFormat {
			continue
		}
		target := l.byID[e.volume]
		dev := p.disk[l.diskOf(target)]
		var err error
		if target.typ == entryPartition {
			err = s.api.FormatPartition(ctx, s.node, dev.ID, partitionIDs[target], e.fstype, e.label)
		} else {
			err = s.api.FormatBlockDevice(ctx, s.node, dev.ID, e.fstype, e.label)
		}
		if err != nil {
			return fail(e, err)
		}
		s.printf("Storage: %s formatted %s", display.Printable(target.id), e.fstype)
	}
	for _, e := range l.entries {
		if e.typ != entryMount {
			continue
		}
		target := l.byID[l.byID[e.device].volume]
		dev := p.disk[l.diskOf(target)]
		var err error
		if target.typ == entryPartition {
			err = s.api.MountPartition(ctx, s.node, dev.ID, partitionIDs[target], e.path)
		} else {
			err = s.api.MountBlockDevice(ctx, s.node, dev.ID, e.path)
		}
		if err != nil {
			return fail(e, err)
		}
		s.printf("Storage: %s mounted on %s", display.Printable(target.id), e.path)
	}
	return nil
}

// clearStorage removes the partitions and filesystems of the machine's
// physical disks, as Testflinger's clear_storage_config does.
func (s *session) clearStorage(ctx context.Context) error {
	devs, err := s.api.BlockDevices(ctx, s.node)
	if err != nil {
		return fmt.Errorf("reading the machine's disks: %w", err)
	}
	for _, d := range devs {
		if !d.Physical() {
			continue
		}
		for _, p := range d.Partitions {
			if err := s.api.DeletePartition(ctx, s.node, d.ID, p.ID); err != nil {
				return fmt.Errorf("clearing the storage: deleting partition %d of %s: %w", p.ID, d.Name, err)
			}
		}
		if d.Filesystem != nil {
			if d.Filesystem.MountPoint != "" {
				if err := s.api.UnmountBlockDevice(ctx, s.node, d.ID); err != nil {
					return fmt.Errorf("clearing the storage: unmounting %s: %w", d.Name, err)
				}
			}
			if err := s.api.UnformatBlockDevice(ctx, s.node, d.ID); err != nil {
				return fmt.Errorf("clearing the storage: unformatting %s: %w", d.Name, err)
			}
		}
	}
	return nil
}

// printableValue formats a job value for a message.
func printableValue(v any) string { return display.Printable(fmt.Sprint(v)) }
