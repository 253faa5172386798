package muxpi

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/image"
)

// AttachmentsDir is where a job's provisioning attachments are, in its run
// directory, as Testflinger's agent puts them.
const AttachmentsDir = "attachments/provision"

// blockNode is what a block device node given by a mux must look like.
var blockNode = regexp.MustCompile(`^/dev/[A-Za-z0-9][A-Za-z0-9._/-]*$`)

// provisionData is the job's provision_data, checked.
type provisionData struct {
	src          image.Source
	media        string // "", "sd" or "usb"
	createUser   bool
	bootCheckURL string
}

// parseProvisionData reads and checks provision_data; every error names
// the key at fault.
func parseProvisionData(run *drivers.Run) (provisionData, error) {
	var pd provisionData
	if run.Job == nil {
		return pd, errors.New("no job")
	}
	d := run.Job.ProvisionData
	u, err := d.String("url", "")
	if err != nil {
		return pd, fmt.Errorf("provision_data.%w", err)
	}
	att, err := d.String("use_attachment", "")
	if err != nil {
		return pd, fmt.Errorf("provision_data.%w", err)
	}
	sum, err := d.String("sha256", "")
	if err != nil {
		return pd, fmt.Errorf("provision_data.%w", err)
	}
	switch {
	case u != "":
		// Only the network: a file URL would let a job write the lab
		// host's own files to the device.
		if err := drivers.CheckImageURL(u); err != nil {
			return pd, fmt.Errorf("provision_data.url: %w", err)
		}
		pd.src = image.Source{URL: u, SHA256: sum}
	case att != "":
		path, err := attachment(run.Dir, att)
		if err != nil {
			return pd, fmt.Errorf("provision_data.use_attachment: %w", err)
		}
		pd.src = image.Source{Path: path, SHA256: sum}
	default:
		return pd, errors.New("provision_data.url: required: give the url of the image to write, or use_attachment naming an attachment of the provision phase")
	}
	if pd.media, err = d.String("media", ""); err != nil {
		return pd, fmt.Errorf("provision_data.%w", err)
	}
	if pd.media != "" && pd.media != "sd" && pd.media != "usb" {
		return pd, fmt.Errorf("provision_data.media: must be sd or usb, got %q", pd.media)
	}
	if pd.createUser, err = d.Bool("create_user", true); err != nil {
		return pd, fmt.Errorf("provision_data.%w", err)
	}
	if pd.bootCheckURL, err = d.String("boot_check_url", ""); err != nil {
		return pd, fmt.Errorf("provision_data.%w", err)
	}
	if pd.bootCheckURL != "" {
		if err := drivers.CheckImageURL(strings.ReplaceAll(pd.bootCheckURL, "$DEVICE_IP", "device")); err != nil {
			return pd, fmt.Errorf("provision_data.boot_check_url: %w", err)
		}
	}
	return pd, nil
}

// attachment returns the path of the provisioning attachment name in the
// run directory dir. The name must stay inside attachments/provision,
// symbolic links included, and name a regular file.
func attachment(dir, name string) (string, error) {
	if !filepath.IsLocal(name) {
		return "", fmt.Errorf("%q is not a file name inside %s", name, AttachmentsDir)
	}
	base := filepath.Join(dir, filepath.FromSlash(AttachmentsDir))
	path := filepath.Join(base, name)
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("the job has no provisioning attachment %q", name)
		}
		return "", fmt.Errorf("attachment %q: %w", name, err)
	}
	realBase, err := filepath.EvalSymlinks(base)
	if err != nil {
		return "", fmt.Errorf("attachment %q: %w", name, err)
	}
	if rel, err := filepath.Rel(realBase, real); err != nil || !filepath.IsLocal(rel) {
		return "", fmt.Errorf("attachment %q leads outside %s", name, AttachmentsDir)
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("attachment %q: %w", name, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("attachment %q is not a regular file", name)
	}
	return real, nil
}
