package maasapi

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// The status names of MAAS machines (status_name) that the maas2 driver
// deals with.
const (
	StatusNew              = "New"
	StatusReady            = "Ready"
	StatusAllocated        = "Allocated"
	StatusDeploying        = "Deploying"
	StatusDeployed         = "Deployed"
	StatusFailedDeployment = "Failed deployment"
	StatusReleasing        = "Releasing"
	StatusFailedReleasing  = "Failed releasing"
	StatusBroken           = "Broken"
)

// Power states (power_state).
const (
	PowerOn      = "on"
	PowerOff     = "off"
	PowerUnknown = "unknown"
	PowerError   = "error"
)

// Bytes is a size in bytes. MAAS sends sizes as JSON numbers; some
// tools and older servers send them as strings of digits, which Bytes
// also accepts.
type Bytes int64

// UnmarshalJSON reads a number or a string of digits.
func (b *Bytes) UnmarshalJSON(data []byte) error {
	s := strings.TrimSpace(string(data))
	if s == "null" {
		*b = 0
		return nil
	}
	if strings.HasPrefix(s, `"`) {
		var str string
		if err := json.Unmarshal(data, &str); err != nil {
			return err
		}
		s = str
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		f, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil || f < 0 || f > 1<<62 {
			return fmt.Errorf("size %q is not a number of bytes", s)
		}
		n = int64(f)
	}
	*b = Bytes(n)
	return nil
}

// String formats b in decimal units, as MAAS shows sizes (500.1 GB).
func (b Bytes) String() string {
	const unit = 1000
	if b < unit {
		return fmt.Sprintf("%d B", int64(b))
	}
	div, exp := int64(unit), 0
	for n := int64(b) / unit; n >= unit && exp < 4; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(b)/float64(div), "kMGTP"[exp])
}

// Version is the answer of the version endpoint.
type Version struct {
	// Version is the MAAS version, such as "3.5.0".
	Version string `json:"version"`
	// Subversion is the build, such as "16322-g.1234abcd".
	Subversion string `json:"subversion"`
	// Capabilities are the API's capabilities.
	Capabilities []string `json:"capabilities"`
}

var versionPrefix = regexp.MustCompile(`^(\d+)\.(\d+)`)

// AtLeast reports whether the version is major.minor or later. A version
// that does not start with major.minor numbers is an error.
func (v Version) AtLeast(major, minor int) (bool, error) {
	m := versionPrefix.FindStringSubmatch(strings.TrimSpace(v.Version))
	if m == nil {
		return false, fmt.Errorf("MAAS reports version %q, which does not start with MAJOR.MINOR", v.Version)
	}
	ma, err1 := strconv.Atoi(m[1])
	mi, err2 := strconv.Atoi(m[2])
	if err1 != nil || err2 != nil {
		return false, fmt.Errorf("MAAS reports version %q, which does not start with MAJOR.MINOR", v.Version)
	}
	return ma > major || (ma == major && mi >= minor), nil
}

// Machine is a MAAS machine, as the machines endpoints return it (the
// fields the maas2 driver reads).
type Machine struct {
	SystemID        string        `json:"system_id"`
	Hostname        string        `json:"hostname"`
	FQDN            string        `json:"fqdn"`
	Status          int           `json:"status"`
	StatusName      string        `json:"status_name"`
	StatusMessage   string        `json:"status_message"`
	PowerState      string        `json:"power_state"`
	PowerType       string        `json:"power_type"`
	Owner           string        `json:"owner"`
	Architecture    string        `json:"architecture"`
	OSystem         string        `json:"osystem"`
	DistroSeries    string        `json:"distro_series"`
	HWEKernel       string        `json:"hwe_kernel"`
	EphemeralDeploy bool          `json:"ephemeral_deploy"`
	IPAddresses     []string      `json:"ip_addresses"`
	BootDisk        *BlockDevice  `json:"boot_disk"`
	BlockDevices    []BlockDevice `json:"blockdevice_set"`
}

// Filesystem is a filesystem on a block device or a partition.
type Filesystem struct {
	FSType       string `json:"fstype"`
	Label        string `json:"label"`
	UUID         string `json:"uuid"`
	MountPoint   string `json:"mount_point"`
	MountOptions string `json:"mount_options"`
}

// Partition is a partition of a block device.
type Partition struct {
	ID         int         `json:"id"`
	UUID       string      `json:"uuid"`
	Path       string      `json:"path"`
	Type       string      `json:"type"`
	Size       Bytes       `json:"size"`
	Bootable   bool        `json:"bootable"`
	Filesystem *Filesystem `json:"filesystem"`
	UsedFor    string      `json:"used_for"`
	DeviceID   int         `json:"device_id"`
	SystemID   string      `json:"system_id"`
}

// BlockDevice is a machine's block device: a physical disk, or a virtual
// device (an LVM logical volume, a RAID, a bcache) MAAS made.
type BlockDevice struct {
	ID                 int         `json:"id"`
	Name               string      `json:"name"`
	Type               string      `json:"type"` // "physical" or "virtual"
	Path               string      `json:"path"`
	IDPath             string      `json:"id_path"`
	Model              string      `json:"model"`
	Serial             string      `json:"serial"`
	Size               Bytes       `json:"size"`
	AvailableSize      Bytes       `json:"available_size"`
	BlockSize          int         `json:"block_size"`
	PartitionTableType string      `json:"partition_table_type"`
	Partitions         []Partition `json:"partitions"`
	Filesystem         *Filesystem `json:"filesystem"`
	UsedFor            string      `json:"used_for"`
	Tags               []string    `json:"tags"`
	SystemID           string      `json:"system_id"`
}

// Physical reports whether d is a physical disk.
func (d BlockDevice) Physical() bool { return d.Type == "physical" }

// ScriptResultSet is one run of a machine's scripts (commissioning,
// testing or installation), as the results endpoint lists them.
type ScriptResultSet struct {
	ID         int            `json:"id"`
	Type       int            `json:"type"`
	TypeName   string         `json:"type_name"`
	Status     int            `json:"status"`
	StatusName string         `json:"status_name"`
	Started    string         `json:"started"`
	Ended      string         `json:"ended"`
	Results    []ScriptResult `json:"results"`
}

// ScriptResult is one script of a ScriptResultSet.
type ScriptResult struct {
	ID         int    `json:"id"`
	Name       string `json:"name"`
	StatusName string `json:"status_name"`
	ExitStatus *int   `json:"exit_status"`
}
