package maasapi

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
)

// Version reads the server's version (GET version/).
func (c *Client) Version(ctx context.Context) (Version, error) {
	var v Version
	err := c.do(ctx, request{method: http.MethodGet, path: "version/"}, &v)
	return v, err
}

func machinePath(systemID string) string { return "machines/" + url.PathEscape(systemID) + "/" }

// Machine reads a machine (GET machines/{system_id}/).
func (c *Client) Machine(ctx context.Context, systemID string) (*Machine, error) {
	var m Machine
	if err := c.do(ctx, request{method: http.MethodGet, path: machinePath(systemID)}, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// machineOp runs a POST operation on a machine and returns the machine
// MAAS answers with.
func (c *Client) machineOp(ctx context.Context, systemID, op string, params url.Values) (*Machine, error) {
	var m Machine
	if err := c.do(ctx, request{method: http.MethodPost, path: machinePath(systemID), op: op, params: params}, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

func withComment(comment string) url.Values {
	v := url.Values{}
	if comment != "" {
		v.Set("comment", comment)
	}
	return v
}

// Release releases a machine (op=release). MAAS answers at once; the
// machine goes through Releasing to Ready. Releasing a machine that is
// Ready or Releasing already succeeds and does nothing.
func (c *Client) Release(ctx context.Context, systemID, comment string) (*Machine, error) {
	return c.machineOp(ctx, systemID, "release", withComment(comment))
}

// MarkBroken marks a machine Broken (op=mark_broken), releasing it first
// when it is allocated.
func (c *Client) MarkBroken(ctx context.Context, systemID, comment string) (*Machine, error) {
	return c.machineOp(ctx, systemID, "mark_broken", withComment(comment))
}

// MarkFixed marks a Broken machine fixed (op=mark_fixed), which makes it
// Ready. MAAS only lets administrators do it.
func (c *Client) MarkFixed(ctx context.Context, systemID, comment string) (*Machine, error) {
	return c.machineOp(ctx, systemID, "mark_fixed", withComment(comment))
}

// PowerOff powers a machine off (op=power_off, stop_mode hard or soft).
// MAAS asks the machine's BMC and answers before the power changes.
func (c *Client) PowerOff(ctx context.Context, systemID, stopMode, comment string) (*Machine, error) {
	v := withComment(comment)
	if stopMode != "" {
		v.Set("stop_mode", stopMode)
	}
	return c.machineOp(ctx, systemID, "power_off", v)
}

// SetStorageLayout replaces a Ready machine's storage configuration with
// a layout MAAS makes (op=set_storage_layout), such as "flat".
func (c *Client) SetStorageLayout(ctx context.Context, systemID, layout string) (*Machine, error) {
	v := url.Values{}
	v.Set("storage_layout", layout)
	return c.machineOp(ctx, systemID, "set_storage_layout", v)
}

// Allocate allocates the machine systemID to the key's user
// (POST machines/?op=allocate system_id=...).
func (c *Client) Allocate(ctx context.Context, systemID, comment string) (*Machine, error) {
	v := withComment(comment)
	v.Set("system_id", systemID)
	var m Machine
	if err := c.do(ctx, request{method: http.MethodPost, path: "machines/", op: "allocate", params: v}, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// DeployParams are the parameters of Deploy.
type DeployParams struct {
	// DistroSeries is the release to deploy, such as "jammy" (distro_series).
	DistroSeries string
	// HWEKernel is the kernel, such as "hwe-22.04" (hwe_kernel; "": MAAS's default).
	HWEKernel string
	// UserData is the cloud-init user data as the job gives it; Deploy
	// encodes it in base64, as MAAS wants (nil: none).
	UserData []byte
	// Ephemeral deploys the machine in memory (ephemeral_deploy, MAAS 3.5
	// and later).
	Ephemeral bool
	// Comment goes to the machine's event log.
	Comment string
}

// Deploy deploys an allocated machine (op=deploy). MAAS answers at once;
// the machine goes through Deploying to Deployed or Failed deployment.
func (c *Client) Deploy(ctx context.Context, systemID string, p DeployParams) (*Machine, error) {
	v := withComment(p.Comment)
	if p.DistroSeries != "" {
		v.Set("distro_series", p.DistroSeries)
	}
	if p.HWEKernel != "" {
		v.Set("hwe_kernel", p.HWEKernel)
	}
	if p.UserData != nil {
		v.Set("user_data", base64.StdEncoding.EncodeToString(p.UserData))
	}
	if p.Ephemeral {
		v.Set("ephemeral_deploy", "true")
	}
	return c.machineOp(ctx, systemID, "deploy", v)
}

func blockDevicesPath(systemID string) string {
	return "nodes/" + url.PathEscape(systemID) + "/blockdevices/"
}

func blockDevicePath(systemID string, device int) string {
	return blockDevicesPath(systemID) + strconv.Itoa(device) + "/"
}

func partitionPath(systemID string, device, partition int) string {
	return blockDevicePath(systemID, device) + "partition/" + strconv.Itoa(partition)
}

// BlockDevices lists a machine's block devices (GET nodes/{id}/blockdevices/).
func (c *Client) BlockDevices(ctx context.Context, systemID string) ([]BlockDevice, error) {
	var d []BlockDevice
	err := c.do(ctx, request{method: http.MethodGet, path: blockDevicesPath(systemID)}, &d)
	return d, err
}

// blockDeviceOp runs a POST operation on a block device.
func (c *Client) blockDeviceOp(ctx context.Context, systemID string, device int, op string, params url.Values) error {
	return c.do(ctx, request{method: http.MethodPost, path: blockDevicePath(systemID, device), op: op, params: params}, nil)
}

// SetBootDisk makes a physical block device the machine's boot disk.
func (c *Client) SetBootDisk(ctx context.Context, systemID string, device int) error {
	return c.blockDeviceOp(ctx, systemID, device, "set_boot_disk", nil)
}

// RenameBlockDevice sets a block device's name (PUT name=...).
func (c *Client) RenameBlockDevice(ctx context.Context, systemID string, device int, name string) error {
	v := url.Values{}
	v.Set("name", name)
	return c.do(ctx, request{method: http.MethodPut, path: blockDevicePath(systemID, device), params: v}, nil)
}

func formatParams(fstype, label string) url.Values {
	v := url.Values{}
	v.Set("fstype", fstype)
	if label != "" {
		v.Set("label", label)
	}
	return v
}

func mountParams(mountPoint string) url.Values {
	v := url.Values{}
	v.Set("mount_point", mountPoint)
	return v
}

// FormatBlockDevice puts a filesystem on a whole block device.
func (c *Client) FormatBlockDevice(ctx context.Context, systemID string, device int, fstype, label string) error {
	return c.blockDeviceOp(ctx, systemID, device, "format", formatParams(fstype, label))
}

// UnformatBlockDevice removes a block device's filesystem.
func (c *Client) UnformatBlockDevice(ctx context.Context, systemID string, device int) error {
	return c.blockDeviceOp(ctx, systemID, device, "unformat", nil)
}

// MountBlockDevice mounts a block device's filesystem at mountPoint.
func (c *Client) MountBlockDevice(ctx context.Context, systemID string, device int, mountPoint string) error {
	return c.blockDeviceOp(ctx, systemID, device, "mount", mountParams(mountPoint))
}

// UnmountBlockDevice unmounts a block device's filesystem.
func (c *Client) UnmountBlockDevice(ctx context.Context, systemID string, device int) error {
	return c.blockDeviceOp(ctx, systemID, device, "unmount", nil)
}

// CreatePartition creates a partition of size bytes on a block device
// (MAAS rounds it up to its alignment); size 0 takes the space left.
func (c *Client) CreatePartition(ctx context.Context, systemID string, device int, size int64) (*Partition, error) {
	v := url.Values{}
	if size > 0 {
		v.Set("size", strconv.FormatInt(size, 10))
	}
	var p Partition
	err := c.do(ctx, request{method: http.MethodPost, path: blockDevicePath(systemID, device) + "partitions/", params: v}, &p)
	if err != nil {
		return nil, err
	}
	return &p, nil
}

// DeletePartition deletes a partition.
func (c *Client) DeletePartition(ctx context.Context, systemID string, device, partition int) error {
	return c.do(ctx, request{method: http.MethodDelete, path: partitionPath(systemID, device, partition)}, nil)
}

func (c *Client) partitionOp(ctx context.Context, systemID string, device, partition int, op string, params url.Values) error {
	return c.do(ctx, request{method: http.MethodPost, path: partitionPath(systemID, device, partition), op: op, params: params}, nil)
}

// FormatPartition puts a filesystem on a partition.
func (c *Client) FormatPartition(ctx context.Context, systemID string, device, partition int, fstype, label string) error {
	return c.partitionOp(ctx, systemID, device, partition, "format", formatParams(fstype, label))
}

// MountPartition mounts a partition's filesystem at mountPoint.
func (c *Client) MountPartition(ctx context.Context, systemID string, device, partition int, mountPoint string) error {
	return c.partitionOp(ctx, systemID, device, partition, "mount", mountParams(mountPoint))
}

// ScriptResults lists a machine's script results of one type
// ("installation", "commissioning" or "testing"; "": all), as
// GET nodes/{id}/results/?type=... does.
func (c *Client) ScriptResults(ctx context.Context, systemID, typ string) ([]ScriptResultSet, error) {
	v := url.Values{}
	if typ != "" {
		v.Set("type", typ)
	}
	var sets []ScriptResultSet
	err := c.do(ctx, request{method: http.MethodGet, path: "nodes/" + url.PathEscape(systemID) + "/results/", params: v}, &sets)
	return sets, err
}

// DownloadScriptResult returns the combined output of a script result set
// as text (GET nodes/{id}/results/{result}/?op=download).
func (c *Client) DownloadScriptResult(ctx context.Context, systemID string, resultID int) (string, error) {
	v := url.Values{}
	v.Set("output", "combined")
	v.Set("filetype", "txt")
	var s string
	err := c.do(ctx, request{method: http.MethodGet, path: fmt.Sprintf("nodes/%s/results/%d/", url.PathEscape(systemID), resultID), op: "download", params: v}, &s)
	return s, err
}
