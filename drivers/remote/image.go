package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/flash"
	"github.com/flingerlab/flinger/drivers/image"
)

// ImageWrite is an image for WriteImage to write.
type ImageWrite struct {
	// Source is the image.
	Source image.Source
	// Flash are flash.Write's options: the block device, sudo, where to
	// decompress, the image cache, progress reports, and Out, the job's
	// output, which is also told what is written.
	Flash flash.Options
	// Timeout bounds the write (0: no bound but the context's);
	// TimeoutKey is the device key that sets it, for messages
	// ("write_timeout").
	Timeout    time.Duration
	TimeoutKey string
}

// WriteImage streams w.Source into the block device w.Flash.Device of the
// host (see flash.Write), within w.Timeout, and tells w.Flash.Out what it
// writes and what was written. A connection the write broke or cut short
// is never used again. It fails with an *UnreachableError when the host
// cannot be reached, an error wrapping ctx.Err() when ctx is done, and
// otherwise a *drivers.ProvisioningError: the image could not be fetched
// or is corrupt, dd failed, the connection broke during the write, or the
// write did not finish in time. The device can then be written again.
func (h *Host) WriteImage(ctx context.Context, w ImageWrite) (flash.Result, error) {
	c, err := h.Connect(ctx)
	if err != nil {
		return flash.Result{}, err
	}
	out := w.Flash.Out
	if out == nil {
		out = io.Discard
	}
	dev := w.Flash.Device
	fmt.Fprintf(out, "Writing %s to %s on %s\n", display.Printable(w.Source.String()), dev, h.What)
	wctx, cancel := withTimeout(ctx, w.Timeout)
	defer cancel()
	res, err := flash.Write(wctx, c, w.Source, w.Flash)
	if err != nil {
		var we *flash.WriteError
		var ie *image.Error
		if !errors.As(err, &we) && !errors.As(err, &ie) {
			// The link broke, or the write was cut short.
			h.Drop(c)
		}
		switch {
		case ctx.Err() != nil:
			return res, fmt.Errorf("writing the image: %w", err)
		case wctx.Err() != nil:
			return res, &drivers.ProvisioningError{Err: fmt.Errorf("writing the image to %s did not finish within %s (%s)", dev, w.Timeout, w.TimeoutKey)}
		case we == nil && ie == nil:
			return res, &drivers.ProvisioningError{Err: fmt.Errorf("the connection to %s broke while writing the image to %s: %w", h.What, dev, err)}
		}
		// The image's or dd's error, which names the image or the device.
		return res, &drivers.ProvisioningError{Err: err}
	}
	cached := ""
	if res.FromCache {
		cached = ", from the image cache"
	}
	fmt.Fprintf(out, "Wrote %s (%s%s) in %s\n", display.Bytes(res.BytesOut), res.Format, cached, res.Elapsed.Round(time.Millisecond))
	return res, nil
}
