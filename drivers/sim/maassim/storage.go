package maassim

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// MAAS's storage arithmetic (maasserver/models/partitiontable.py and
// partition.py): a partition table keeps 5 MiB of its disk, and
// partitions are rounded up to 4 MiB.
const (
	PartitionTableExtraSpace = 5 << 20
	PartitionAlignment       = 4 << 20
	// efiSize is the flat layout's EFI system partition.
	efiSize = 512 << 20
)

// fstypes are the filesystems a block device or partition can be
// formatted with (MAAS's FILESYSTEM_FORMAT_TYPE_CHOICES, less the
// memory-backed ones).
var fstypes = []string{"ext2", "ext4", "xfs", "fat32", "vfat", "swap", "btrfs", "zfsroot"}

type filesystem struct {
	fstype, label, uuid, mountPoint string
}

type partition struct {
	id       int
	size     int64
	uuid     string
	bootable bool
	fs       *filesystem
}

type blockDevice struct {
	id            int
	name          string
	size          int64
	model, serial string
	partitions    []*partition
	fs            *filesystem
}

// usedLocked returns the bytes a device's partitions use, partition table
// included.
func (d *blockDevice) used() int64 {
	if d.fs != nil {
		return d.size
	}
	if len(d.partitions) == 0 {
		return 0
	}
	n := int64(PartitionTableExtraSpace)
	for _, p := range d.partitions {
		n += p.size
	}
	return n
}

// available returns the bytes left for a new partition.
func (d *blockDevice) available() int64 {
	if d.fs != nil {
		return 0
	}
	if len(d.partitions) == 0 {
		return max(d.size-PartitionTableExtraSpace, 0)
	}
	return max(d.size-d.used(), 0)
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// BlockDeviceInfo is a snapshot of a block device, for tests.
type BlockDeviceInfo struct {
	ID         int
	Name       string
	Size       int64
	Boot       bool
	FSType     string // whole-device filesystem
	MountPoint string
	Partitions []PartitionInfo
}

// PartitionInfo is a snapshot of a partition.
type PartitionInfo struct {
	ID         int
	Size       int64
	FSType     string
	Label      string
	MountPoint string
}

// Storage returns a snapshot of the machine's disks.
func (m *Machine) Storage() []BlockDeviceInfo {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	var out []BlockDeviceInfo
	for _, d := range m.disks {
		bi := BlockDeviceInfo{ID: d.id, Name: d.name, Size: d.size, Boot: d.id == m.bootDisk}
		if d.fs != nil {
			bi.FSType, bi.MountPoint = d.fs.fstype, d.fs.mountPoint
		}
		for _, p := range d.partitions {
			pi := PartitionInfo{ID: p.id, Size: p.size}
			if p.fs != nil {
				pi.FSType, pi.Label, pi.MountPoint = p.fs.fstype, p.fs.label, p.fs.mountPoint
			}
			bi.Partitions = append(bi.Partitions, pi)
		}
		out = append(out, bi)
	}
	return out
}

// Mounts returns the machine's mount points and what is mounted there
// ("sda-part2 ext4").
func (m *Machine) Mounts() map[string]string {
	out := map[string]string{}
	for _, d := range m.Storage() {
		if d.MountPoint != "" {
			out[d.MountPoint] = d.Name + " " + d.FSType
		}
		for i, p := range d.Partitions {
			if p.MountPoint != "" {
				out[p.MountPoint] = fmt.Sprintf("%s-part%d %s", d.Name, i+1, p.FSType)
			}
		}
	}
	return out
}

// flatLocked applies MAAS's flat layout: on the boot disk, a 512 MiB
// FAT32 EFI system partition on /boot/efi and the rest as ext4 on /;
// the other disks are left empty.
func (m *Machine) flatLocked() {
	m.blankLocked()
	d := m.diskLocked(m.bootDisk)
	if d == nil {
		return
	}
	efi := &partition{id: m.s.idLocked(), size: efiSize, uuid: randomUUID(), bootable: true,
		fs: &filesystem{fstype: "fat32", label: "efi", uuid: randomUUID(), mountPoint: "/boot/efi"}}
	d.partitions = append(d.partitions, efi)
	root := &partition{id: m.s.idLocked(), size: d.available() / PartitionAlignment * PartitionAlignment, uuid: randomUUID(),
		fs: &filesystem{fstype: "ext4", label: "root", uuid: randomUUID(), mountPoint: "/"}}
	d.partitions = append(d.partitions, root)
}

// blankLocked removes every partition and filesystem.
func (m *Machine) blankLocked() {
	for _, d := range m.disks {
		d.partitions, d.fs = nil, nil
	}
}

// hasRootLocked reports whether a filesystem is mounted on /.
func (m *Machine) hasRootLocked() bool {
	for _, d := range m.disks {
		if d.fs != nil && d.fs.mountPoint == "/" {
			return true
		}
		for _, p := range d.partitions {
			if p.fs != nil && p.fs.mountPoint == "/" {
				return true
			}
		}
	}
	return false
}

func (m *Machine) diskLocked(id int) *blockDevice {
	for _, d := range m.disks {
		if d.id == id {
			return d
		}
	}
	return nil
}

func randomUUID() string {
	h := randomHex(32)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func fsJSON(fs *filesystem) any {
	if fs == nil {
		return nil
	}
	var mp, label any
	if fs.mountPoint != "" {
		mp = fs.mountPoint
	}
	if fs.label != "" {
		label = fs.label
	}
	return map[string]any{"fstype": fs.fstype, "label": label, "uuid": fs.uuid, "mount_point": mp, "mount_options": nil}
}

func (m *Machine) partitionJSONLocked(d *blockDevice, i int) map[string]any {
	p := d.partitions[i]
	usedFor := "Unused"
	if p.fs != nil {
		usedFor = p.fs.fstype + " formatted filesystem"
		if p.fs.mountPoint != "" {
			usedFor += " mounted at " + p.fs.mountPoint
		}
	}
	return map[string]any{
		"id": p.id, "uuid": p.uuid, "size": p.size, "bootable": p.bootable, "type": "partition",
		"path":         fmt.Sprintf("/dev/disk/by-dname/%s-part%d", d.name, i+1),
		"filesystem":   fsJSON(p.fs),
		"used_for":     usedFor,
		"tags":         []string{},
		"device_id":    d.id,
		"system_id":    m.systemID,
		"resource_uri": fmt.Sprintf("%snodes/%s/blockdevices/%d/partition/%d", APIPrefix, m.systemID, d.id, p.id),
	}
}

func (m *Machine) blockDeviceJSONLocked(d *blockDevice) map[string]any {
	parts := []any{}
	for i := range d.partitions {
		parts = append(parts, m.partitionJSONLocked(d, i))
	}
	var ptable any
	usedFor := "Unused"
	switch {
	case d.fs != nil:
		usedFor = d.fs.fstype + " formatted filesystem"
		if d.fs.mountPoint != "" {
			usedFor += " mounted at " + d.fs.mountPoint
		}
	case len(d.partitions) > 0:
		ptable = "GPT"
		usedFor = fmt.Sprintf("GPT partitioned with %d partitions", len(d.partitions))
	}
	return map[string]any{
		"id": d.id, "name": d.name, "type": "physical",
		"path":                 "/dev/disk/by-dname/" + d.name,
		"id_path":              "/dev/disk/by-id/wwn-0x5000c500" + fmt.Sprintf("%08x", d.id),
		"model":                d.model,
		"serial":               d.serial,
		"size":                 d.size,
		"block_size":           512,
		"available_size":       d.available(),
		"used_size":            d.used(),
		"partition_table_type": ptable,
		"partitions":           parts,
		"filesystem":           fsJSON(d.fs),
		"used_for":             usedFor,
		"tags":                 []string{"ssd"},
		"system_id":            m.systemID,
		"storage_pool":         nil,
		"resource_uri":         fmt.Sprintf("%snodes/%s/blockdevices/%d/", APIPrefix, m.systemID, d.id),
	}
}

// The storage operations.

// blockDeviceLocked finds the request's machine and block device.
func (s *Server) blockDeviceLocked(r *http.Request) (*Machine, *blockDevice, error) {
	m, err := s.machineLocked(r)
	if err != nil {
		return nil, nil, err
	}
	id, err := strconv.Atoi(r.PathValue("dev"))
	if err != nil {
		for _, d := range m.disks {
			if d.name == r.PathValue("dev") {
				return m, d, nil
			}
		}
		return nil, nil, errNotFound
	}
	d := m.diskLocked(id)
	if d == nil {
		return nil, nil, errNotFound
	}
	return m, d, nil
}

// partitionLocked finds the request's machine, block device and partition.
func (s *Server) partitionLocked(r *http.Request) (*Machine, *blockDevice, int, error) {
	m, d, err := s.blockDeviceLocked(r)
	if err != nil {
		return nil, nil, 0, err
	}
	id, err := strconv.Atoi(r.PathValue("part"))
	if err != nil {
		return nil, nil, 0, errNotFound
	}
	for i, p := range d.partitions {
		if p.id == id {
			return m, d, i, nil
		}
	}
	return nil, nil, 0, errNotFound
}

// needReady refuses an operation on a machine that is not Ready.
func needReady(m *Machine, what string) error {
	if m.status != StatusReady {
		return conflict("Cannot %s because the machine is not Ready.", what)
	}
	return nil
}

// needReadyOrAllocated refuses an operation on a machine that is neither
// Ready nor Allocated.
func needReadyOrAllocated(m *Machine, what string) error {
	if m.status != StatusReady && m.status != StatusAllocated {
		return conflict("Cannot %s because the machine is not Ready or Allocated.", what)
	}
	return nil
}

func (s *Server) setStorageLayout(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.machineLocked(r)
	if err != nil {
		return nil, err
	}
	if m.status != StatusReady {
		return nil, conflict("Cannot change the storage layout on a machine that is not Ready.")
	}
	switch layout := r.FormValue("storage_layout"); layout {
	case "flat":
		m.flatLocked()
	case "blank":
		m.blankLocked()
	case "":
		return nil, invalid("storage_layout", "This field is required.")
	default:
		return nil, invalid("storage_layout", "Select a valid choice. %s is not one of the available choices (the simulator has flat and blank).", layout)
	}
	return m.jsonLocked(), nil
}

func (s *Server) listBlockDevices(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.machineLocked(r)
	if err != nil {
		return nil, err
	}
	out := []any{}
	for _, d := range m.disks {
		out = append(out, m.blockDeviceJSONLocked(d))
	}
	return out, nil
}

func (s *Server) readBlockDevice(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, d, err := s.blockDeviceLocked(r)
	if err != nil {
		return nil, err
	}
	return m.blockDeviceJSONLocked(d), nil
}

func (s *Server) updateBlockDevice(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, d, err := s.blockDeviceLocked(r)
	if err != nil {
		return nil, err
	}
	if err := needReady(m, "update block device"); err != nil {
		return nil, err
	}
	if name := r.FormValue("name"); name != "" {
		if strings.ContainsAny(name, "/ ") {
			return nil, invalid("name", "Name may not contain a '/' or a space.")
		}
		for _, o := range m.disks {
			if o != d && o.name == name {
				return nil, invalid("name", "A block device named %s already exists on this machine.", name)
			}
		}
		d.name = name
	}
	return m.blockDeviceJSONLocked(d), nil
}

func (s *Server) setBootDisk(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, d, err := s.blockDeviceLocked(r)
	if err != nil {
		return nil, err
	}
	if err := needReady(m, "set as boot disk"); err != nil {
		return nil, err
	}
	m.bootDisk = d.id
	return text("OK"), nil
}

// format reads and checks the parameters of a format operation.
func format(r *http.Request) (*filesystem, error) {
	fstype := r.FormValue("fstype")
	if fstype == "" {
		return nil, invalid("fstype", "This field is required.")
	}
	if !slices.Contains(fstypes, fstype) {
		return nil, invalid("fstype", "Select a valid choice. %s is not one of the available choices.", fstype)
	}
	return &filesystem{fstype: fstype, label: r.FormValue("label"), uuid: randomUUID()}, nil
}

// mountPoint reads and checks the mount_point of a mount operation.
func mountPoint(r *http.Request, fs *filesystem) (string, error) {
	mp := r.FormValue("mount_point")
	switch {
	case mp == "" && (fs == nil || fs.fstype != "swap"):
		return "", invalid("mount_point", "This field is required.")
	case mp != "" && !strings.HasPrefix(mp, "/"):
		return "", invalid("mount_point", "Enter a valid absolute path.")
	}
	return mp, nil
}

func (s *Server) formatBlockDevice(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, d, err := s.blockDeviceLocked(r)
	if err != nil {
		return nil, err
	}
	if err := needReadyOrAllocated(m, "format block device"); err != nil {
		return nil, err
	}
	if len(d.partitions) > 0 {
		return nil, badRequest("Cannot format block device with partitions.")
	}
	fs, err := format(r)
	if err != nil {
		return nil, err
	}
	d.fs = fs
	return m.blockDeviceJSONLocked(d), nil
}

func (s *Server) unformatBlockDevice(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, d, err := s.blockDeviceLocked(r)
	if err != nil {
		return nil, err
	}
	if err := needReadyOrAllocated(m, "unformat block device"); err != nil {
		return nil, err
	}
	switch {
	case d.fs == nil:
		return nil, badRequest("Block device is not formatted.")
	case d.fs.mountPoint != "":
		return nil, badRequest("Filesystem is mounted and cannot be unformatted. Unmount the filesystem before unformatting the block device.")
	}
	d.fs = nil
	return m.blockDeviceJSONLocked(d), nil
}

func (s *Server) mountBlockDevice(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, d, err := s.blockDeviceLocked(r)
	if err != nil {
		return nil, err
	}
	if err := needReadyOrAllocated(m, "mount block device"); err != nil {
		return nil, err
	}
	if d.fs == nil {
		return nil, badRequest("Cannot mount an unformatted block device.")
	}
	mp, err := mountPoint(r, d.fs)
	if err != nil {
		return nil, err
	}
	d.fs.mountPoint = mp
	return m.blockDeviceJSONLocked(d), nil
}

func (s *Server) unmountBlockDevice(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, d, err := s.blockDeviceLocked(r)
	if err != nil {
		return nil, err
	}
	if err := needReadyOrAllocated(m, "unmount block device"); err != nil {
		return nil, err
	}
	if d.fs == nil || d.fs.mountPoint == "" {
		return nil, badRequest("Filesystem is already unmounted.")
	}
	d.fs.mountPoint = ""
	return m.blockDeviceJSONLocked(d), nil
}

func (s *Server) listPartitions(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, d, err := s.blockDeviceLocked(r)
	if err != nil {
		return nil, err
	}
	out := []any{}
	for i := range d.partitions {
		out = append(out, m.partitionJSONLocked(d, i))
	}
	return out, nil
}

// parseSize reads a size parameter: bytes, or with a K, M, G or T suffix
// (powers of 1000).
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'K', 'k':
			mult = 1000
		case 'M':
			mult = 1000 * 1000
		case 'G':
			mult = 1000 * 1000 * 1000
		case 'T':
			mult = 1000 * 1000 * 1000 * 1000
		}
		if mult > 1 {
			s = s[:n-1]
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("not a size")
	}
	return v * mult, nil
}

func (s *Server) createPartition(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, d, err := s.blockDeviceLocked(r)
	if err != nil {
		return nil, err
	}
	if err := needReady(m, "create partition"); err != nil {
		return nil, err
	}
	if d.fs != nil {
		return nil, badRequest("Cannot create a partition on a formatted block device.")
	}
	avail := d.available() / PartitionAlignment * PartitionAlignment
	size := avail
	if v := r.FormValue("size"); v != "" {
		n, err := parseSize(v)
		if err != nil {
			return nil, invalid("size", "Enter a whole number.")
		}
		size = roundUp(n, PartitionAlignment)
	}
	switch {
	case size < PartitionAlignment:
		return nil, invalid("size", "Ensure this value is greater than or equal to %d.", PartitionAlignment)
	case size > avail:
		return nil, invalid("size", "Ensure this value is less than or equal to %d.", avail)
	}
	bootable, err := parseBool("bootable", r.FormValue("bootable"))
	if err != nil {
		return nil, err
	}
	d.partitions = append(d.partitions, &partition{id: s.idLocked(), size: size, uuid: randomUUID(), bootable: bootable})
	return m.partitionJSONLocked(d, len(d.partitions)-1), nil
}

func (s *Server) readPartition(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, d, i, err := s.partitionLocked(r)
	if err != nil {
		return nil, err
	}
	return m.partitionJSONLocked(d, i), nil
}

func (s *Server) deletePartition(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, d, i, err := s.partitionLocked(r)
	if err != nil {
		return nil, err
	}
	if err := needReady(m, "delete partition"); err != nil {
		return nil, err
	}
	d.partitions = slices.Delete(d.partitions, i, i+1)
	return nil, nil
}

func (s *Server) formatPartition(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, d, i, err := s.partitionLocked(r)
	if err != nil {
		return nil, err
	}
	if err := needReadyOrAllocated(m, "format partition"); err != nil {
		return nil, err
	}
	fs, err := format(r)
	if err != nil {
		return nil, err
	}
	d.partitions[i].fs = fs
	return m.partitionJSONLocked(d, i), nil
}

func (s *Server) unformatPartition(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, d, i, err := s.partitionLocked(r)
	if err != nil {
		return nil, err
	}
	if err := needReadyOrAllocated(m, "unformat partition"); err != nil {
		return nil, err
	}
	p := d.partitions[i]
	switch {
	case p.fs == nil:
		return nil, badRequest("Partition is not formatted.")
	case p.fs.mountPoint != "":
		return nil, badRequest("Filesystem is mounted and cannot be unformatted. Unmount the filesystem before unformatting the partition.")
	}
	p.fs = nil
	return m.partitionJSONLocked(d, i), nil
}

func (s *Server) mountPartition(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, d, i, err := s.partitionLocked(r)
	if err != nil {
		return nil, err
	}
	if err := needReadyOrAllocated(m, "mount partition"); err != nil {
		return nil, err
	}
	p := d.partitions[i]
	if p.fs == nil {
		return nil, badRequest("Cannot mount an unformatted partition.")
	}
	mp, err := mountPoint(r, p.fs)
	if err != nil {
		return nil, err
	}
	p.fs.mountPoint = mp
	return m.partitionJSONLocked(d, i), nil
}

func (s *Server) unmountPartition(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, d, i, err := s.partitionLocked(r)
	if err != nil {
		return nil, err
	}
	if err := needReadyOrAllocated(m, "unmount partition"); err != nil {
		return nil, err
	}
	p := d.partitions[i]
	if p.fs == nil || p.fs.mountPoint == "" {
		return nil, badRequest("Filesystem is already unmounted.")
	}
	p.fs.mountPoint = ""
	return m.partitionJSONLocked(d, i), nil
}
