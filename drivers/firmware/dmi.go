package firmware

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// How a chassis type's firmware is updated, in Testflinger's table.
const (
	methodNone = 0
	methodLVFS = 1 << iota
	methodOEM
)

// chassisTypes are the SMBIOS chassis types (DMI chassis_type, from 0) and
// how Testflinger updates each (fw_devices/dmi.py).
var chassisTypes = []struct {
	name   string
	method int
}{
	{"Undefined", methodNone},
	{"Other", methodNone},
	{"Unknown", methodNone},
	{"Desktop", methodLVFS},
	{"Low Profile Desktop", methodNone},
	{"Pizza Box", methodNone},
	{"Mini Tower", methodNone},
	{"Tower", methodOEM},
	{"Portable", methodNone},
	{"Laptop", methodNone},
	{"Notebook", methodNone},
	{"Hand Held", methodNone},
	{"Docking Station", methodNone},
	{"All In One", methodLVFS},
	{"Sub Notebook", methodNone},
	{"Space-saving", methodNone},
	{"Lunch Box", methodNone},
	{"Main Server Chassis", methodOEM},
	{"Expansion Chassis", methodNone},
	{"Sub Chassis", methodNone},
	{"Bus Expansion Chassis", methodNone},
	{"Peripheral Chassis", methodNone},
	{"RAID Chassis", methodNone},
	{"Rack Mount Chassis", methodOEM | methodLVFS},
	{"Sealed-case PC", methodNone},
	{"Multi-system", methodOEM},
	{"CompactPCI", methodNone},
	{"AdvancedTCA", methodNone},
	{"Blade", methodOEM},
	{"Blade Enclosure", methodNone},
	{"Tablet", methodNone},
	{"Convertible", methodNone},
	{"Detachable", methodNone},
	{"IoT Gateway", methodNone},
	{"Embedded PC", methodNone},
	{"Mini PC", methodLVFS},
	{"Stick PC", methodNone},
}

// lvfsVendors are the DMI chassis vendors whose devices are updated from
// LVFS; oemVendors those updated by OEM tools Flinger does not drive.
var (
	lvfsVendors = []string{"HP", "Dell Inc.", "LENOVO"}
	oemVendors  = map[string]string{"HPE": "HPE servers are updated through their iLO BMC (ilorest with MAAS power credentials), which Flinger does not support"}
)

// chassisName names a chassis type number for messages.
func chassisName(t int) string {
	if t >= 0 && t < len(chassisTypes) {
		return fmt.Sprintf("%d (%s)", t, chassisTypes[t].name)
	}
	return strconv.Itoa(t)
}

// classify decides from the DMI chassis vendor and type (as read from
// /sys/class/dmi/id, surrounding white space removed) whether the device
// is updated from LVFS; otherwise it returns an *UnsupportedError.
func classify(vendor, typ string) (chassis string, err error) {
	t, perr := strconv.Atoi(strings.TrimSpace(typ))
	if perr != nil {
		return typ, &UnsupportedError{Vendor: vendor, Chassis: strconv.Quote(typ), Reason: "the chassis type is not a number"}
	}
	chassis = chassisName(t)
	if t < 0 || t >= len(chassisTypes) {
		return chassis, &UnsupportedError{Vendor: vendor, Chassis: chassis, Reason: "unknown chassis type"}
	}
	method := chassisTypes[t].method
	if method&methodLVFS != 0 && slices.Contains(lvfsVendors, vendor) {
		return chassis, nil
	}
	if reason, ok := oemVendors[vendor]; ok && method&methodOEM != 0 {
		return chassis, &UnsupportedError{Vendor: vendor, Chassis: chassis, Reason: reason}
	}
	return chassis, &UnsupportedError{Vendor: vendor, Chassis: chassis,
		Reason: fmt.Sprintf("not in the supported scope (LVFS: %s desktops, all-in-ones, mini PCs and rack-mount chassis; set the device key firmware_device_type: %s to update another device through LVFS)",
			strings.Join(lvfsVendors, ", "), DeviceTypeLVFS)}
}
