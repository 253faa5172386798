package maassim

import (
	"context"
	"fmt"
	"io/fs"
	"regexp"
	"slices"
	"strings"

	"github.com/flingerlab/flinger/drivers/sim"
)

// efiEntry is a UEFI boot entry of a machine.
type efiEntry struct {
	label, path string
	ipv4        bool
}

// efiEntries are every machine's boot entries: the installed system, the
// network (IPv4 and IPv6 PXE) and the firmware's shell.
var efiEntries = map[string]efiEntry{
	"0000": {"ubuntu", `HD(1,GPT,5b8f7f0c-3c0e-4b4c-9e5e-0c4f1a2b3c4d,0x800,0x100000)/File(\EFI\ubuntu\shimx64.efi)`, false},
	"0001": {"UEFI: PXE IPv4 Intel(R) Ethernet Controller X710", "PciRoot(0x0)/Pci(0x1,0x0)/Pci(0x0,0x0)/MAC(3cecef000001,1)/IPv4(0.0.0.0,0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)", true},
	"0002": {"UEFI: PXE IPv6 Intel(R) Ethernet Controller X710", "PciRoot(0x0)/Pci(0x1,0x0)/Pci(0x0,0x0)/MAC(3cecef000001,1)/IPv6([::]:<->[::]:,0,0)", false},
	"0003": {"UEFI: Built-in EFI Shell", "FvVol(5c60f367-a505-419a-859e-2a4ff6ca6fe5)/FvFile(7c04a583-9e3e-4f1c-ad65-e05268d0b4d1)", false},
}

var bootNum = regexp.MustCompile(`^[0-9A-Fa-f]{4}$`)

// efibootmgr is the system's efibootmgr: with no arguments or -v it lists
// the boot entries (-v with their device paths); -o N,N,... sets the boot
// order, as root only.
func (m *Machine) efibootmgr(_ context.Context, x *sim.Exec) int {
	args := x.Args[1:]
	verbose := false
	switch {
	case len(args) == 0:
	case len(args) == 1 && args[0] == "-v":
		verbose = true
	case len(args) == 2 && (args[0] == "-o" || args[0] == "--bootorder"):
		if !x.Sudo {
			return x.Errorf(1, "Could not set BootOrder: Permission denied")
		}
		order := strings.Split(args[1], ",")
		for _, e := range order {
			if !bootNum.MatchString(e) {
				return x.Errorf(1, "Invalid BootOrder order entry value %s", e)
			}
			if _, ok := efiEntries[strings.ToUpper(e)]; !ok {
				return x.Errorf(1, "Could not set BootOrder: boot entry %s does not exist", e)
			}
		}
		m.s.mu.Lock()
		m.efiOrder = make([]string, 0, len(order))
		for _, e := range order {
			m.efiOrder = append(m.efiOrder, strings.ToUpper(e))
		}
		m.s.mu.Unlock()
		verbose = false
	default:
		return x.Errorf(1, "only efibootmgr [-v] and efibootmgr -o ORDER are simulated")
	}
	m.s.mu.Lock()
	current, order := m.efiCurrent, slices.Clone(m.efiOrder)
	m.s.mu.Unlock()
	fmt.Fprintf(x.Stdout, "BootCurrent: %s\nTimeout: 1 seconds\nBootOrder: %s\n", current, strings.Join(order, ","))
	for _, n := range []string{"0000", "0001", "0002", "0003"} {
		e := efiEntries[n]
		if verbose {
			fmt.Fprintf(x.Stdout, "Boot%s* %s\t%s\n", n, e.label, e.path)
		} else {
			fmt.Fprintf(x.Stdout, "Boot%s* %s\n", n, e.label)
		}
	}
	return 0
}

// sysFile is the Check of the machine's tee (sim.Tee): a file under /sys
// must exist (the TPM's request file only exists on a machine with a
// TPM), and only root may write it.
func sysFile(x *sim.Exec, p string) error {
	if !strings.HasPrefix(p, "/sys/") {
		return nil
	}
	if _, ok := x.DUT.ReadFile(p); !ok {
		return fs.ErrNotExist
	}
	if !x.Sudo {
		return fs.ErrPermission
	}
	return nil
}
