package muxpi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sync"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/flash"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/drivers/remote"
)

// blockDevice is a device in lsblk's JSON output.
type blockDevice struct {
	Name       string        `json:"name"`
	Label      *string       `json:"label"`
	Mountpoint *string       `json:"mountpoint"`
	Children   []blockDevice `json:"children"`
}

// kernelName is what a block device's name (from lsblk) must look like
// to be used in /dev/<name>.
var kernelName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// lsblk returns the target device as lsblk describes it, with its
// partitions as children.
func (p *provisioning) lsblk(ctx context.Context) (blockDevice, error) {
	out, err := p.ctl.Run(ctx, []string{"lsblk", "-J", "-o", "NAME,LABEL,MOUNTPOINT", p.target}, remote.RunOptions{})
	if err != nil {
		return blockDevice{}, err
	}
	var doc struct {
		BlockDevices []blockDevice `json:"blockdevices"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return blockDevice{}, fmt.Errorf("reading lsblk's output for %s: %w", p.target, err)
	}
	if len(doc.BlockDevices) != 1 {
		return blockDevice{}, fmt.Errorf("lsblk described %d devices for %s, want 1", len(doc.BlockDevices), p.target)
	}
	return doc.BlockDevices[0], nil
}

// unmountTarget unmounts the target and its partitions where they are
// mounted, best effort: they may not be.
func (p *provisioning) unmountTarget(ctx context.Context) {
	dev, err := p.lsblk(ctx)
	if err != nil {
		p.log.Info("muxpi: cannot list the partitions to unmount", "device", p.target, "err", err)
		return
	}
	for _, b := range append([]blockDevice{dev}, dev.Children...) {
		if b.Mountpoint == nil || *b.Mountpoint == "" || !kernelName.MatchString(b.Name) {
			continue
		}
		node := "/dev/" + b.Name
		p.printf("Unmounting %s from %s", node, display.Printable(*b.Mountpoint))
		if _, err := p.ctl.Run(ctx, []string{"sudo", "umount", node}, remote.RunOptions{}); err != nil {
			p.log.Info("muxpi: unmount failed", "device", node, "err", err)
		}
	}
}

// write writes the image to the target, then syncs and rereads its
// partition table.
func (p *provisioning) write(ctx context.Context) error {
	p.unmountTarget(ctx)
	c, err := p.ctl.Connect(ctx)
	if err != nil {
		return p.controlFailure("connecting to the control host to write the image", err)
	}
	p.printf("Writing %s to %s on the control host", display.Printable(p.pd.src.String()), p.target)
	pr := &progressPrinter{run: p.run, w: p.out, start: time.Now()}
	fctx, cancel := context.WithTimeout(ctx, p.opts.flashTimeout)
	defer cancel()
	res, err := flash.Write(fctx, c, p.pd.src, flash.Options{
		Device:     p.target,
		Sudo:       true,
		Decompress: p.opts.decompress,
		Cache:      p.run.Images,
		Progress:   pr.report,
		Out:        p.out,
		Log:        p.log,
	})
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		p.ctl.Drop(c) // the connection may be what failed
		if fctx.Err() != nil {
			return &drivers.ProvisioningError{Err: fmt.Errorf("writing the image to %s did not finish within flash_timeout (%s): %w", p.target, p.opts.flashTimeout, err)}
		}
		return &drivers.ProvisioningError{Err: fmt.Errorf("writing the image to %s: %w", p.target, describeWriteError(err))}
	}
	from := ""
	if res.FromCache {
		from = ", from the lab host's image cache"
	}
	p.printf("Wrote %s to %s in %s (%s image of %s%s)", display.Bytes(res.BytesOut), p.target,
		res.Elapsed.Round(100*time.Millisecond), res.Format, display.Bytes(res.BytesIn), from)

	// The new image has a new host key: forget the one recorded.
	if err := p.dev.SSHSettings().Policy().Reset(p.dev.Name); err != nil {
		p.log.Warn("muxpi: could not forget the device's host key", "err", err)
		p.printf("Warning: could not forget the device's recorded ssh host key: %v", err)
	}
	if _, err := p.ctl.Run(ctx, []string{"sync"}, remote.RunOptions{RetryExit: true}); err != nil {
		if ctx.Err() != nil {
			return err
		}
		p.printf("Warning: sync failed on the control host: %v", err)
	}
	if _, err := p.ctl.Run(ctx, []string{"sudo", "hdparm", "-z", p.target}, remote.RunOptions{Timeout: hdparmTimeout}); err != nil {
		if ctx.Err() != nil {
			return err
		}
		p.printf("Warning: hdparm -z %s failed (the partition table may not be reread): %v", p.target, err)
	}
	return nil
}

// describeWriteError says what a failed write means for the job.
func describeWriteError(err error) error {
	var we *flash.WriteError
	switch {
	case errors.As(err, &we):
		return fmt.Errorf("dd failed on the control host; the storage holds a partial image and can be written again: %w", err)
	case image.KindOf(err) != 0:
		return err
	}
	return fmt.Errorf("the connection to the control host failed during the write: %w", err)
}

// progressPrinter passes the write's progress on to the run and prints it
// every progressEvery.
type progressPrinter struct {
	run   *drivers.Run
	w     io.Writer
	start time.Time

	mu   sync.Mutex
	last time.Time
}

func (pp *progressPrinter) report(pr image.Progress) {
	pp.run.ReportProgress(pr)
	pp.mu.Lock()
	defer pp.mu.Unlock()
	now := time.Now()
	if now.Sub(pp.last) < progressEvery || now.Sub(pp.start) < progressEvery {
		return
	}
	pp.last = now
	in := display.Bytes(pr.BytesIn)
	if pr.Total > 0 {
		in += fmt.Sprintf(" of %s (%d%%)", display.Bytes(pr.Total), pr.BytesIn*100/pr.Total)
	}
	written := ""
	if pr.BytesOut > 0 {
		written = fmt.Sprintf(", %s written", display.Bytes(pr.BytesOut))
	}
	fmt.Fprintf(pp.w, "  ... %s of the image read%s, %s/s\n", in, written, display.Bytes(int64(pr.Rate)))
}
