package muxpisim

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"strings"

	"github.com/flingerlab/flinger/drivers/sim"
)

// installCommands adds the control host's commands.
func (r *Rig) installCommands() {
	c := r.Control
	c.Handle("stm", r.stm)
	c.Handle(r.muxCLI, r.mux)
	c.Handle("lsblk", r.lsblk)
	c.Handle("dd", sim.DD{Open: r.openMedium}.Run)
	r.mounts.Install()
}

// stm is MuxPi's stm: -ts and -dut switch the SD card, -tick power-cycles
// the DUT.
func (r *Rig) stm(_ context.Context, x *sim.Exec) int {
	if len(x.Args) != 2 {
		return x.Errorf(2, "usage: stm -ts | -dut | -tick")
	}
	switch x.Args[1] {
	case "-ts":
		r.setSide(MediaSD, HostSide)
	case "-dut":
		r.setSide(MediaSD, DUTSide)
	case "-tick":
		r.DUT.PowerCycle()
	default:
		return x.Errorf(2, "unknown option %q (usage: stm -ts | -dut | -tick)", x.Args[1])
	}
	return 0
}

func (r *Rig) setSide(m Media, s Side) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	md := r.media[m]
	r.switchLocked(md, s)
	return md.node
}

// mux is the Zapper's mux command: CLI sdwire|typecmux
// plug_to_self|plug_to_dut|set TS|set DUT, and CLI --help.
func (r *Rig) mux(_ context.Context, x *sim.Exec) int {
	args := x.Args[1:]
	if len(args) == 1 && (args[0] == "--help" || args[0] == "-h") {
		fmt.Fprintf(x.Stdout, "usage: %s sdwire|typecmux plug_to_self|plug_to_dut|set TS|DUT\n", x.Args[0])
		return 0
	}
	if len(args) < 2 {
		return x.Errorf(2, "usage: %s sdwire|typecmux plug_to_self|plug_to_dut|set TS|DUT", x.Args[0])
	}
	var m Media
	switch args[0] {
	case "sdwire":
		m = MediaSD
	case "typecmux":
		m = MediaUSB
	default:
		return x.Errorf(2, "unknown mux %q (sdwire, typecmux)", args[0])
	}
	switch strings.Join(args[1:], " ") {
	case "plug_to_self":
		fmt.Fprintln(x.Stdout, r.setSide(m, HostSide))
	case "set TS":
		r.setSide(m, HostSide)
	case "plug_to_dut", "set DUT":
		r.setSide(m, DUTSide)
	default:
		return x.Errorf(2, "unknown action %q (plug_to_self, plug_to_dut, set TS, set DUT)", strings.Join(args[1:], " "))
	}
	return 0
}

// lsblkDevice is one device in lsblk's JSON output.
type lsblkDevice struct {
	Name       string        `json:"name"`
	Label      *string       `json:"label,omitempty"`
	Mountpoint *string       `json:"mountpoint,omitempty"`
	Children   []lsblkDevice `json:"children,omitempty"`
}

// lsblk lists a medium's partitions: lsblk [-J] [-n] [-o COLUMNS] DEVICE...
// with the columns NAME, LABEL and MOUNTPOINT.
func (r *Rig) lsblk(_ context.Context, x *sim.Exec) int {
	cols := []string{"NAME", "LABEL", "MOUNTPOINT"}
	jsonOut, heading := false, true
	var devs []string
	args := x.Args[1:]
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "-J" || a == "--json":
			jsonOut = true
		case a == "-n" || a == "--noheadings":
			heading = false
		case a == "-o" || a == "--output":
			if i+1 >= len(args) {
				return x.Errorf(1, "option requires an argument -- 'o'")
			}
			i++
			cols = strings.Split(strings.ToUpper(args[i]), ",")
		case strings.HasPrefix(a, "-"):
			return x.Errorf(1, "invalid option %q (simulated: -J, -n, -o)", a)
		default:
			devs = append(devs, a)
		}
	}
	for _, c := range cols {
		if c != "NAME" && c != "LABEL" && c != "MOUNTPOINT" {
			return x.Errorf(1, "unknown column: %s", c)
		}
	}
	if len(devs) == 0 {
		return x.Errorf(1, "a device is required (simulated: lsblk DEVICE)")
	}
	mounts := r.mounts.List()
	r.mu.Lock()
	var out []lsblkDevice
	for _, d := range devs {
		var md *medium
		for _, m := range r.media {
			if m.node == d && m.side == HostSide {
				md = m
			}
		}
		if md == nil {
			r.mu.Unlock()
			return x.Errorf(32, "%s: not a block device", d)
		}
		dev := lsblkDevice{Name: strings.TrimPrefix(md.node, "/dev/")}
		for i, p := range md.vol.Partitions() {
			label := p.Label
			child := lsblkDevice{Name: strings.TrimPrefix(sim.PartitionNode(md.node, i+1), "/dev/"), Label: &label}
			for _, mt := range mounts {
				if mt.Volume == md.vol && mt.N == i+1 {
					mp := mt.Dir
					child.Mountpoint = &mp
				}
			}
			dev.Children = append(dev.Children, child)
		}
		out = append(out, dev)
	}
	r.mu.Unlock()

	if jsonOut {
		// lsblk prints every column asked for, null when empty.
		type entry map[string]any
		var conv func(d lsblkDevice) entry
		conv = func(d lsblkDevice) entry {
			e := entry{}
			for _, c := range cols {
				switch c {
				case "NAME":
					e["name"] = d.Name
				case "LABEL":
					e["label"] = d.Label
				case "MOUNTPOINT":
					e["mountpoint"] = d.Mountpoint
				}
			}
			if len(d.Children) > 0 {
				var ch []entry
				for _, c := range d.Children {
					ch = append(ch, conv(c))
				}
				e["children"] = ch
			}
			return e
		}
		var devices []entry
		for _, d := range out {
			devices = append(devices, conv(d))
		}
		b, _ := json.MarshalIndent(map[string]any{"blockdevices": devices}, "", "   ")
		fmt.Fprintf(x.Stdout, "%s\n", b)
		return 0
	}
	if heading {
		fmt.Fprintln(x.Stdout, strings.Join(cols, " "))
	}
	var printDev func(d lsblkDevice)
	printDev = func(d lsblkDevice) {
		var f []string
		for _, c := range cols {
			switch c {
			case "NAME":
				f = append(f, d.Name)
			case "LABEL":
				f = append(f, deref(d.Label))
			case "MOUNTPOINT":
				f = append(f, deref(d.Mountpoint))
			}
		}
		fmt.Fprintln(x.Stdout, strings.TrimRight(strings.Join(f, " "), " "))
		for _, c := range d.Children {
			printDev(c)
		}
	}
	for _, d := range out {
		printDev(d)
	}
	return 0
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// openMedium is dd's Open on the control host: a medium switched to it,
// which only root may write.
func (r *Rig) openMedium(x *sim.Exec, path string) (*sim.Disk, error) {
	disk := r.Control.Disk(path)
	if disk == nil {
		return nil, fs.ErrNotExist
	}
	if !x.Sudo {
		return nil, fs.ErrPermission
	}
	return disk, nil
}
