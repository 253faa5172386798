package maas2

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/maas2/maasapi"
	"github.com/flingerlab/flinger/drivers/sshx"
)

// maxCredentialsFile bounds what is read of maas_credentials.
const maxCredentialsFile = 4096

// CredentialsError reports that the device's MAAS API key could not be
// read. It never holds the key.
type CredentialsError struct {
	// Key is the device key at fault: maas_credentials or maas_api_key.
	Key string
	// Path is the credentials file, for maas_credentials.
	Path string
	// Err is what went wrong.
	Err error
}

func (e *CredentialsError) Error() string {
	if e.Path != "" {
		return fmt.Sprintf("%s %s: %v", e.Key, e.Path, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Key, e.Err)
}

// Unwrap returns the cause.
func (e *CredentialsError) Unwrap() error { return e.Err }

// apiKey reads the device's MAAS API key: maas_api_key, or the file
// maas_credentials names, which must be a regular file that other users
// cannot read or write.
func (d *Driver) apiKey() (maasapi.Key, error) {
	if d.opts.inlineKey != "" {
		k, err := maasapi.ParseKey(d.opts.inlineKey)
		if err != nil {
			return maasapi.Key{}, &CredentialsError{Key: "maas_api_key", Err: err}
		}
		return k, nil
	}
	path := d.opts.credentials
	fail := func(err error) (maasapi.Key, error) {
		return maasapi.Key{}, &CredentialsError{Key: "maas_credentials", Path: path, Err: err}
	}
	f, err := os.Open(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fail(fmt.Errorf("cannot be opened: %w", err))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	if !st.Mode().IsRegular() {
		return fail(errors.New("is not a regular file"))
	}
	if st.Mode().Perm()&0o007 != 0 {
		return fail(fmt.Errorf("other users can read or write it (mode %04o); make it readable by its owner only (chmod 600)", st.Mode().Perm()))
	}
	b, err := io.ReadAll(io.LimitReader(f, maxCredentialsFile+1))
	if err != nil {
		return fail(fmt.Errorf("reading it: %w", err))
	}
	if len(b) > maxCredentialsFile {
		return fail(fmt.Errorf("is larger than %d bytes: it should hold the API key only", maxCredentialsFile))
	}
	k, err := maasapi.ParseKey(string(b))
	if err != nil {
		return fail(err)
	}
	return k, nil
}

// newSession reads the key and makes the MAAS client of one phase. A key
// that cannot be read fails the phase (a plain failure: the device's
// configuration is at fault, not the job).
func (d *Driver) newSession(run *drivers.Run) (*session, error) {
	dev := d.device(run)
	s := &session{d: d, run: run, dev: dev, w: run.Output(), node: d.opts.nodeID}
	s.log = run.Logger().With("device", dev.Name, "system_id", s.node)
	key, err := d.apiKey()
	if err != nil {
		return nil, fmt.Errorf("maas2: device %s: %w", dev.Name, err)
	}
	s.api, err = maasapi.New(maasapi.Options{
		URL:            d.opts.url,
		Key:            key,
		RequestTimeout: d.opts.requestTimeout,
		Retry: sshx.Backoff{
			Attempts: d.opts.retries,
			Initial:  d.opts.retryInterval,
			Max:      12 * d.opts.retryInterval,
		},
		OnRetry: func(what string, attempt int, err error, delay time.Duration) {
			s.printf("MAAS: %s failed (%v); trying again in %s (attempt %d of %d)",
				what, err, delay.Round(time.Millisecond), attempt+1, d.opts.retries)
		},
		Log: s.log,
	})
	if err != nil {
		return nil, fmt.Errorf("maas2: device %s: %w", dev.Name, err)
	}
	s.log = s.log.With("maas", s.api.Server())
	return s, nil
}
