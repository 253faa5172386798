package drivers

import (
	"errors"
	"fmt"
	"io"
	"net/url"

	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/events"
)

// Output returns r.Out, or a writer that discards when it is nil.
func (r *Run) Output() io.Writer {
	if r.Out == nil {
		return io.Discard
	}
	return r.Out
}

// CheckImageURL checks that u is an http or https URL with a host, the
// only URLs a job may name an image by: a file URL would have the lab
// host read its own files, and hand them to the device.
func CheckImageURL(u string) error {
	parsed, err := url.Parse(u)
	if err != nil {
		return fmt.Errorf("not a valid URL: %w", err)
	}
	if (parsed.Scheme != "http" && parsed.Scheme != "https") || parsed.Host == "" {
		return fmt.Errorf("%s is not an http or https URL", display.Printable(u))
	}
	return nil
}

// ImageSource returns the image a job's provision_data names: url (see
// CheckImageURL) and the optional sha256 of the file it serves. missing
// is the error for a job that gives no url, saying what the URL is for
// ("provision_data.url is required: the URL of the image to write to the
// board"). Every error names the key at fault; callers report them as
// provisioning failures.
func ImageSource(job *events.Job, missing string) (image.Source, error) {
	var pd events.Data
	if job != nil {
		pd = job.ProvisionData
	}
	u, err := pd.String("url", "")
	if err != nil {
		return image.Source{}, fmt.Errorf("provision_data.%w", err)
	}
	if u == "" {
		return image.Source{}, errors.New(missing)
	}
	if err := CheckImageURL(u); err != nil {
		return image.Source{}, fmt.Errorf("provision_data.url: %w", err)
	}
	sum, err := pd.String("sha256", "")
	if err != nil {
		return image.Source{}, fmt.Errorf("provision_data.%w", err)
	}
	return image.Source{URL: u, SHA256: sum}, nil
}
