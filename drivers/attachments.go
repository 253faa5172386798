package drivers

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pkg/sftp"

	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
)

// TestAttachmentsDir is where, in the run directory, the worker unpacks
// the test phase's attachments: attachments/test/<agent path>.
const TestAttachmentsDir = "attachments/test"

// fakeTypes are the names of the fake connector, which has no device to
// copy attachments to.
var fakeTypes = []string{"fake_connector", "fake"}

// deviceCopy is one file or directory to create on the device.
type deviceCopy struct {
	field string      // the attachment's field: test_data.attachments[i]
	src   string      // slash path under TestAttachmentsDir
	dst   string      // path on the device (relative: to the login directory)
	dir   bool        // a directory: created, its mode set once its content is copied
	perm  fs.FileMode // permission bits to give it
	// into is set for a file whose device path did not end with "/": it
	// is copied into dst/<base of src> when dst is a directory on the
	// device.
	into bool
}

// CopyDeviceAttachments copies every test attachment that names a device
// path (test_data.attachments[].device) to the device, as the test user
// (TestCredentials), before test_cmds run. It prints one line per file to
// run.Out ("copied attachments/test/x.sh to /home/ubuntu/x.sh on 10.0.0.5
// (123 bytes)"). A job with no such attachment is left alone, silently.
//
// The source is <run.Dir>/attachments/test/<agent>, where the worker
// unpacked it; it is read through an os.Root, so an agent path with "..",
// or a symbolic link leading out of attachments/test, is an error naming
// the attachment, as is a source that was not sent with the job.
//
// On the device, a relative path (or one starting with "~/") is relative to
// the test user's home, as scp would have it. A file's device path names
// the file, or, when it ends with "/" or names a directory on the device,
// the directory it is copied into. A directory is copied recursively: its
// device path names the directory its content goes to, and symbolic links
// in it (that stay inside attachments/test) are followed. Missing parent
// directories are created; every file and directory copied gets the
// permission bits of its source. The copy uses SFTP calls only: no shell
// command is ever built from a path.
//
// The fake connector has no device, whatever its device_ip: for it a line
// says the copy is skipped. Any other connector whose device has no device_ip fails,
// naming the attachment. Every source is checked before the device is
// contacted. A failed connection is an error saying so; when ctx is done
// the copy stops with an error wrapping ctx.Err().
func CopyDeviceAttachments(ctx context.Context, run *Run) error {
	var atts []events.Attachment
	if run.Job != nil && run.Job.TestData != nil {
		atts = run.Job.TestData.Attachments
	}
	var idx []int
	for i, a := range atts {
		if a.Device != "" {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("copying test attachments to the device: %w", err)
	}
	out := outOf(run)
	dev := run.Device
	if dev != nil && slices.Contains(fakeTypes, dev.Type) {
		fmt.Fprintf(out, "Not copying %d test attachments to a device: the %s connector has no device\n", len(idx), dev.Type)
		return nil
	}
	if run.Dir == "" {
		return errors.New("copying test attachments to the device: no run directory")
	}
	plan, err := planDeviceCopies(run.Dir, atts, idx)
	if err != nil {
		return err
	}
	if dev == nil || dev.DeviceIP == "" {
		name := "this device"
		if dev != nil {
			name = "device " + display.Printable(dev.Name)
		}
		return fmt.Errorf("%s: device: %s: %s has no device_ip to copy it to",
			field(idx[0]), display.Printable(atts[idx[0]].Device), name)
	}
	return copyToDevice(ctx, run, plan)
}

// field names test attachment i as the job does.
func field(i int) string { return fmt.Sprintf("test_data.attachments[%d]", i) }

// planDeviceCopies lists what to create on the device, checking every
// source under <dir>/attachments/test.
func planDeviceCopies(dir string, atts []events.Attachment, idx []int) ([]deviceCopy, error) {
	var root *os.Root
	r, err := os.OpenRoot(filepath.Join(dir, filepath.FromSlash(TestAttachmentsDir)))
	switch {
	case err == nil:
		root = r
		defer root.Close()
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("copying test attachments to the device: %w", err)
	}
	var plan []deviceCopy
	for _, i := range idx {
		a := atts[i]
		f := field(i)
		if strings.IndexByte(a.Device, 0) >= 0 {
			return nil, fmt.Errorf("%s: device: the path holds a NUL byte", f)
		}
		name := strings.TrimLeft(a.Agent, "/")
		if name == "" {
			return nil, fmt.Errorf("%s: no agent path: nothing was sent with the job to copy to %s", f, display.Printable(a.Device))
		}
		if !filepath.IsLocal(filepath.FromSlash(name)) {
			return nil, fmt.Errorf("%s: agent: %s leads outside %s", f, display.Printable(a.Agent), TestAttachmentsDir)
		}
		name = path.Clean(name)
		if root == nil {
			return nil, fmt.Errorf("%s: %s was not sent with the job", f, display.Printable(name))
		}
		st, err := statIn(root, name)
		if err != nil {
			return nil, sourceError(f, name, err)
		}
		dst := a.Device
		into := false
		switch {
		case st.IsDir():
			plan, err = planDir(root, f, name, dst, st, plan)
			if err != nil {
				return nil, err
			}
			continue
		case !st.Mode().IsRegular():
			return nil, fmt.Errorf("%s: %s is not a regular file or a directory", f, display.Printable(name))
		case strings.HasSuffix(dst, "/"):
			dst += path.Base(name)
		default:
			into = true
		}
		plan = append(plan, deviceCopy{field: f, src: name, dst: dst, perm: st.Mode().Perm(), into: into})
	}
	return plan, nil
}

// planDir adds directory name, then its content, depth first in name
// order, to plan. Symbolic links are followed (root keeps them inside it);
// a directory that holds itself through one is an error.
func planDir(root *os.Root, f, name, dst string, st fs.FileInfo, plan []deviceCopy) ([]deviceCopy, error) {
	var walk func(src, dst string, st fs.FileInfo, parents []fs.FileInfo) error
	walk = func(src, dst string, st fs.FileInfo, parents []fs.FileInfo) error {
		for _, p := range parents {
			if os.SameFile(p, st) {
				return fmt.Errorf("%s: %s: a symbolic link makes the directory hold itself", f, display.Printable(src))
			}
		}
		plan = append(plan, deviceCopy{field: f, src: src, dst: dst, dir: true, perm: st.Mode().Perm()})
		d, err := root.Open(filepath.FromSlash(src))
		if err != nil {
			return sourceError(f, src, err)
		}
		ents, err := d.ReadDir(-1)
		_ = d.Close()
		if err != nil {
			return sourceError(f, src, err)
		}
		slices.SortFunc(ents, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
		parents = append(parents, st)
		for _, e := range ents {
			s, d := path.Join(src, e.Name()), path.Join(dst, e.Name())
			est, err := statIn(root, s)
			if err != nil {
				return sourceError(f, s, err)
			}
			switch {
			case est.IsDir():
				if err := walk(s, d, est, parents); err != nil {
					return err
				}
			case est.Mode().IsRegular():
				plan = append(plan, deviceCopy{field: f, src: s, dst: d, perm: est.Mode().Perm()})
			default:
				return fmt.Errorf("%s: %s is not a regular file or a directory", f, display.Printable(s))
			}
		}
		return nil
	}
	err := walk(name, dst, st, nil)
	return plan, err
}

// statIn stats the slash path name in root, following symbolic links
// that stay inside it.
func statIn(root *os.Root, name string) (fs.FileInfo, error) {
	return root.Stat(filepath.FromSlash(name))
}

// sourceError describes a source that cannot be read.
func sourceError(f, name string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %s was not sent with the job", f, display.Printable(name))
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && strings.Contains(pe.Err.Error(), "escapes") {
		return fmt.Errorf("%s: %s leads outside %s (a symbolic link out of it is refused): %w",
			f, display.Printable(name), TestAttachmentsDir, err)
	}
	return fmt.Errorf("%s: reading %s: %w", f, display.Printable(name), err)
}

// copyToDevice logs in to the device as the test user and carries out plan.
func copyToDevice(ctx context.Context, run *Run, plan []deviceCopy) error {
	dev := run.Device
	log := run.Logger().With("device", dev.Name)
	cfg, err := dev.SSHSettings().DeviceConfig(dev, run.Job, log)
	if err != nil {
		return fmt.Errorf("copying test attachments to the device: %w", err)
	}
	where := fmt.Sprintf("device %s (%s@%s)", display.Printable(dev.Name), display.Printable(cfg.User), cfg.Addr)
	c, err := sshx.Dial(ctx, cfg, dev.Name)
	if err != nil {
		return fmt.Errorf("copying test attachments: connecting to %s: %w", where, err)
	}
	defer c.Close()
	// Closing the connection makes every SFTP call in progress fail.
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	fail := func(format string, args ...any) error {
		err := fmt.Errorf(format, args...)
		if ctx.Err() != nil {
			return fmt.Errorf("copying test attachments to %s: %w (%v)", where, ctx.Err(), err)
		}
		return err
	}
	sc, err := sftp.NewClient(c.SSH(), sftp.UseConcurrentWrites(true))
	if err != nil {
		return fail("copying test attachments: starting SFTP on %s (an SFTP server is required): %w", where, err)
	}
	defer sc.Close()
	home, err := sc.Getwd()
	if err != nil {
		return fail("copying test attachments: finding the home directory of %s on %s: %w", display.Printable(cfg.User), where, err)
	}
	root, err := os.OpenRoot(filepath.Join(run.Dir, filepath.FromSlash(TestAttachmentsDir)))
	if err != nil {
		return fmt.Errorf("copying test attachments to the device: %w", err)
	}
	defer root.Close()

	out := outOf(run)
	var dirs []deviceCopy // their modes are set last, in case one forbids writing
	for _, p := range plan {
		dst := devicePath(home, p.dst)
		if p.dir {
			if err := sc.MkdirAll(dst); err != nil {
				return fail("%s: creating directory %s on %s: %w", p.field, display.Printable(dst), where, err)
			}
			dirs = append(dirs, p)
			continue
		}
		if p.into {
			if st, err := sc.Stat(dst); err == nil && st.IsDir() {
				dst = path.Join(dst, path.Base(p.src))
			}
		}
		n, err := copyFile(sc, root, p.src, dst, p.perm)
		if err != nil {
			return fail("%s: copying %s to %s on %s: %w", p.field, display.Printable(p.src), display.Printable(dst), where, err)
		}
		fmt.Fprintf(out, "copied %s to %s on %s (%d bytes)\n", display.Printable(path.Join(TestAttachmentsDir, p.src)),
			display.Printable(dst), display.Printable(dev.DeviceIP), n)
	}
	for _, d := range slices.Backward(dirs) {
		dst := devicePath(home, d.dst)
		if err := sc.Chmod(dst, d.perm); err != nil {
			return fail("%s: setting the mode of %s on %s: %w", d.field, display.Printable(dst), where, err)
		}
	}
	return nil
}

// devicePath returns the absolute path on the device of p, which is
// relative to home unless absolute ("~" and "~/..." are home too).
func devicePath(home, p string) string {
	switch {
	case p == "~":
		p = ""
	case strings.HasPrefix(p, "~/"):
		p = p[2:]
	}
	if path.IsAbs(p) {
		return path.Clean(p)
	}
	return path.Join(home, p)
}

// copyFile copies src (a slash path in root) to dst on the device, with
// mode perm, creating dst's directory if needed, and returns the number of
// bytes copied.
func copyFile(sc *sftp.Client, root *os.Root, src, dst string, perm fs.FileMode) (int64, error) {
	in, err := root.Open(filepath.FromSlash(src))
	if err != nil {
		return 0, err
	}
	defer in.Close()
	if st, err := in.Stat(); err != nil {
		return 0, err
	} else if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("%s is no longer a regular file", display.Printable(src))
	}
	if err := sc.MkdirAll(path.Dir(dst)); err != nil {
		return 0, fmt.Errorf("creating its directory: %w", err)
	}
	f, err := sc.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return 0, err
	}
	// The mode is set before the data is written, so that the data is
	// never readable by more than perm allows.
	if err := f.Chmod(perm); err != nil {
		_ = f.Close()
		return 0, fmt.Errorf("setting its mode: %w", err)
	}
	n, err := f.ReadFrom(in)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, fmt.Errorf("writing: %w", err)
	}
	return n, nil
}
