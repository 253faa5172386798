package muxpisim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers/sim"
)

// installCommands adds the control host's commands.
func (r *Rig) installCommands() {
	c := r.Control
	c.Handle("stm", r.stm)
	c.Handle(r.muxCLI, r.mux)
	c.Handle("lsblk", r.lsblk)
	c.Handle("mount", r.mountCmd)
	c.Handle("umount", r.umount)
	c.Handle("ls", r.ls)
	c.Handle("test", r.test)
	c.Handle("[", r.test)
	c.Handle("cp", r.cp)
	c.Handle("chmod", r.chmod)
	c.Handle("dd", r.dd)
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
		for i, p := range md.partsLocked() {
			label := p.Label
			child := lsblkDevice{Name: partName(md.node, i), Label: &label}
			for dir, mt := range r.mounts {
				if mt.m == md && mt.index == i {
					mp := dir
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

// mountCmd mounts a partition: mount [-o OPTS] [-t TYPE] DEVICE DIR.
func (r *Rig) mountCmd(_ context.Context, x *sim.Exec) int {
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
		return x.Errorf(1, "usage: mount DEVICE DIR")
	}
	dev, dir := pos[0], path.Clean(pos[1])
	if !x.Sudo {
		return x.Errorf(32, "must be superuser to use mount.")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, busy := r.mounts[dir]; busy {
		return x.Errorf(32, "%s: %s already mounted on %s.", dir, dev, dir)
	}
	for _, mt := range r.mounts {
		if mt.dev == dev {
			return x.Errorf(32, "%s: %s already mounted.", dir, dev)
		}
	}
	m, i, ok := r.partitionLocked(dev)
	if !ok {
		return x.Errorf(32, "%s: special device %s does not exist.", dir, dev)
	}
	r.mountLocked(m, i, dev, dir)
	return 0
}

// umount unmounts mount points or devices: umount [-l] [-f] TARGET...
func (r *Rig) umount(_ context.Context, x *sim.Exec) int {
	if !x.Sudo {
		return x.Errorf(32, "must be superuser to unmount.")
	}
	code := 0
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range x.Args[1:] {
		if strings.HasPrefix(a, "-") {
			continue
		}
		target := path.Clean(a)
		dir := ""
		if _, ok := r.mounts[target]; ok {
			dir = target
		}
		for d, mt := range r.mounts {
			if mt.dev == a {
				dir = d
			}
		}
		if dir == "" {
			fmt.Fprintf(x.Stderr, "umount: %s: not mounted.\n", a)
			code = 32
			continue
		}
		r.unmountLocked(dir)
	}
	return code
}

// exists reports whether p is a file or a directory (a file is under it)
// on the control host, and which.
func (r *Rig) exists(p string) (file, dir bool) {
	p = path.Clean(p)
	if _, ok := r.Control.ReadFile(p); ok {
		return true, false
	}
	prefix := strings.TrimSuffix(p, "/") + "/"
	for _, f := range r.Control.Files() {
		if strings.HasPrefix(f, prefix) {
			return false, true
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	_, mounted := r.mounts[p]
	return false, mounted || p == "/" || p == "/mnt" || p == "/tmp"
}

// test is test -e|-f|-d|-b PATH (and [ ... ]) with directories.
func (r *Rig) test(_ context.Context, x *sim.Exec) int {
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
	file, dir := r.exists(args[1])
	var ok bool
	switch args[0] {
	case "-e":
		ok = file || dir || r.Control.Disk(args[1]) != nil
	case "-f":
		ok = file
	case "-d":
		ok = dir
	case "-b":
		ok = r.Control.Disk(args[1]) != nil
	default:
		return x.Errorf(2, "only -e, -f, -d and -b PATH are simulated")
	}
	if ok {
		return 0
	}
	return 1
}

// ls lists a directory's entries, one a line: ls [-1] [-a] DIR.
func (r *Rig) ls(_ context.Context, x *sim.Exec) int {
	var dirs []string
	for _, a := range x.Args[1:] {
		if !strings.HasPrefix(a, "-") {
			dirs = append(dirs, a)
		}
	}
	if len(dirs) != 1 {
		return x.Errorf(2, "only ls DIR is simulated")
	}
	p := path.Clean(dirs[0])
	if file, _ := r.exists(p); file {
		fmt.Fprintln(x.Stdout, p)
		return 0
	}
	prefix := strings.TrimSuffix(p, "/") + "/"
	var names []string
	for _, f := range r.Control.Files() {
		if rest, ok := strings.CutPrefix(f, prefix); ok {
			name, _, _ := strings.Cut(rest, "/")
			if !slices.Contains(names, name) {
				names = append(names, name)
			}
		}
	}
	if _, dir := r.exists(p); !dir {
		return x.Errorf(2, "cannot access '%s': No such file or directory", dirs[0])
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintln(x.Stdout, n)
	}
	return 0
}

// cp copies a file: cp [-a|-r|-p|-f] SRC DST (DST may be a directory).
func (r *Rig) cp(_ context.Context, x *sim.Exec) int {
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
	b, ok := r.Control.ReadFile(src)
	if !ok {
		return x.Errorf(1, "cannot stat '%s': No such file or directory", pos[0])
	}
	if _, dir := r.exists(dst); dir || strings.HasSuffix(pos[1], "/") {
		dst = dst + "/" + path.Base(src)
	}
	r.Control.WriteFile(dst, b)
	return 0
}

// chmod checks that the file exists; modes are not kept.
func (r *Rig) chmod(_ context.Context, x *sim.Exec) int {
	if len(x.Args) != 3 {
		return x.Errorf(1, "only chmod MODE PATH is simulated")
	}
	if file, dir := r.exists(x.Args[2]); !file && !dir {
		return x.Errorf(1, "cannot access '%s': No such file or directory", x.Args[2])
	}
	return 0
}

// ddBlock is the most the rig's dd writes at once, so that a cancelled
// write stops promptly even on a slow card.
const ddBlock = 256 << 10

// dd writes its standard input to a medium switched to the control host:
// dd of=DEVICE [bs=N[K|M|G]] [status=none|progress] [conv=..] [oflag=..]
// [iflag=..]. It writes in blocks of at most ddBlock, stops as soon as it
// is signalled (exit 130), and prints GNU dd's summary on stderr.
func (r *Rig) dd(ctx context.Context, x *sim.Exec) int {
	of, quiet := "", false
	bs := int64(512)
	for _, a := range x.Args[1:] {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			return x.Errorf(1, "unrecognized operand %q", a)
		}
		switch k {
		case "of":
			of = v
		case "bs", "obs":
			n, err := parseSize(v)
			if err != nil || n <= 0 {
				return x.Errorf(1, "invalid number: %q", v)
			}
			bs = n
		case "status":
			quiet = v == "none"
		case "conv", "oflag", "iflag", "ibs":
		default:
			return x.Errorf(1, "operand %q is not simulated", a)
		}
	}
	if of == "" {
		return x.Errorf(1, "only dd of=DEVICE is simulated")
	}
	disk := r.Control.Disk(of)
	if disk == nil {
		return x.Errorf(1, "failed to open '%s': No such file or directory", of)
	}
	if !x.Sudo {
		return x.Errorf(1, "failed to open '%s': Permission denied", of)
	}
	start := time.Now()
	n, err := disk.CopyTo(ctx, &ctxReader{ctx: ctx, r: x.Stdin}, int(min(bs, ddBlock)))
	if ctx.Err() != nil {
		return 130
	}
	if err != nil {
		if errors.Is(err, sim.ErrIO) {
			fmt.Fprintf(x.Stderr, "dd: error writing '%s': Input/output error\n", of)
		} else {
			fmt.Fprintf(x.Stderr, "dd: error writing '%s': %v\n", of, err)
		}
	}
	if !quiet {
		records, partial := n/bs, 0
		if n%bs != 0 {
			partial = 1
		}
		secs := max(time.Since(start).Seconds(), 1e-6)
		fmt.Fprintf(x.Stderr, "%d+%d records in\n%d+%d records out\n%d bytes copied, %.3f s, %.1f MB/s\n",
			records, partial, records, partial, n, secs, float64(n)/secs/1e6)
	}
	if err != nil {
		return 1
	}
	return 0
}

// parseSize parses dd's sizes: a number with an optional K, M or G suffix.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K") || strings.HasSuffix(s, "k"):
		mult, s = 1<<10, s[:len(s)-1]
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, s[:len(s)-1]
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n > 1<<40/mult {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

// ctxReader is a reader that gives up when ctx is done, even while a Read
// of r blocks (that Read goes on in the background until r ends).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	type result struct {
		n   int
		err error
	}
	buf := make([]byte, min(len(p), 64<<10))
	ch := make(chan result, 1)
	go func() {
		n, err := c.r.Read(buf)
		ch <- result{n, err}
	}()
	select {
	case res := <-ch:
		copy(p, buf[:res.n])
		return res.n, res.err
	case <-c.ctx.Done():
		return 0, c.ctx.Err()
	}
}
