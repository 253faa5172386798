package sshx

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// errNoSFTP reports that the server refused the sftp subsystem.
var errNoSFTP = errors.New("the server has no sftp subsystem")

// cleanupTimeout bounds the removal of a partial upload after a failure.
const cleanupTimeout = 10 * time.Second

// notFoundStatus is the exit status of the cat fallback of Download when
// the file does not exist.
const notFoundStatus = 44

// sftpSession is an SFTP client on its own session.
type sftpSession struct {
	sess *ssh.Session
	sc   *sftp.Client
}

func (s *sftpSession) close() {
	_ = s.sc.Close()
	_ = s.sess.Close()
}

// openSFTP starts an SFTP client, or returns errNoSFTP when the server has
// no sftp subsystem (remembered, so that later calls go straight to the
// fallback). The session is closed when ctx ends, which makes every SFTP
// call in progress fail.
func (c *Client) openSFTP(ctx context.Context) (*sftpSession, func() bool, error) {
	if c.noSFTP.Load() {
		return nil, nil, errNoSFTP
	}
	sess, err := c.newSession(ctx)
	if err != nil {
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = sess.Close() })
	fail := func(err error) (*sftpSession, func() bool, error) {
		stop()
		_ = sess.Close()
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, err
	}
	w, err := sess.StdinPipe()
	if err != nil {
		return fail(err)
	}
	r, err := sess.StdoutPipe()
	if err != nil {
		return fail(err)
	}
	if err := sess.RequestSubsystem("sftp"); err != nil {
		if ctx.Err() == nil && strings.Contains(err.Error(), "subsystem request failed") {
			c.noSFTP.Store(true)
			c.log.Info("ssh: the server has no sftp subsystem; copying files with cat")
			return fail(errNoSFTP)
		}
		return fail(fmt.Errorf("starting sftp: %w", err))
	}
	sc, err := sftp.NewClientPipe(r, w, sftp.UseConcurrentWrites(true))
	if err != nil {
		return fail(fmt.Errorf("starting sftp: %w", err))
	}
	return &sftpSession{sess: sess, sc: sc}, stop, nil
}

// tempName returns a name for a temporary file beside remotePath.
func tempName(remotePath string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	dir, base := path.Split(remotePath)
	if len(base) > 200 {
		base = base[:200] // stay within NAME_MAX (255) with the suffix
	}
	return dir + "." + base + ".flinger-" + hex.EncodeToString(b[:])
}

// Upload copies what r holds to remotePath on the device, with mode's
// permission bits (0: 0644), replacing any file there. The data is written
// to a temporary file beside remotePath, which is renamed into place only
// once all of r has been written, so remotePath never holds part of it. A
// relative path is relative to the login directory; "~" is not expanded.
// It uses SFTP, or cat when the server has no sftp subsystem. When ctx is
// done it stops and returns an error wrapping ctx.Err(); r may still be read
// from after that while one of its Read calls blocks.
func (c *Client) Upload(ctx context.Context, r io.Reader, remotePath string, mode os.FileMode) error {
	if remotePath == "" || strings.IndexByte(remotePath, 0) >= 0 || strings.HasSuffix(remotePath, "/") {
		return c.errorf("upload: invalid remote path %q", remotePath)
	}
	perm := mode.Perm()
	if perm == 0 {
		perm = 0o644
	}
	tmp := tempName(remotePath)
	s, stop, err := c.openSFTP(ctx)
	switch {
	case errors.Is(err, errNoSFTP):
		err = c.uploadCat(ctx, r, tmp, remotePath, perm)
	case err != nil:
	default:
		err = uploadSFTP(ctx, s, r, tmp, remotePath, perm)
		stop()
		s.close()
	}
	if err == nil {
		c.log.Debug("ssh: uploaded", "path", remotePath)
		return nil
	}
	c.removeTemp(ctx, tmp)
	if ctx.Err() != nil {
		return c.errorf("upload %s: %w (%v)", remotePath, ctx.Err(), err)
	}
	return c.errorf("upload %s: %w", remotePath, err)
}

func uploadSFTP(ctx context.Context, s *sftpSession, r io.Reader, tmp, remotePath string, perm os.FileMode) error {
	f, err := s.sc.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return fmt.Errorf("creating %s: %w", tmp, err)
	}
	// Set the mode before writing, so the data is never readable by more
	// than mode allows.
	if err := f.Chmod(perm); err != nil {
		_ = f.Close()
		return fmt.Errorf("setting the mode of %s: %w", tmp, err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := f.ReadFrom(r)
		done <- err
	}()
	select {
	case err = <-done:
	case <-ctx.Done():
		// The session is closed by now: f's writes fail, but a Read of r
		// that blocks keeps the copy going until it returns.
		return ctx.Err()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if _, ok := s.sc.HasExtension("posix-rename@openssh.com"); ok {
		err = s.sc.PosixRename(tmp, remotePath)
	} else {
		// Plain SFTP rename fails when the target exists.
		if rerr := s.sc.Remove(remotePath); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			return fmt.Errorf("replacing %s: %w", remotePath, rerr)
		}
		err = s.sc.Rename(tmp, remotePath)
	}
	if err != nil {
		return fmt.Errorf("renaming %s to %s: %w", tmp, remotePath, err)
	}
	return nil
}

// countingReader counts the bytes read through it and keeps the first
// read error other than io.EOF.
type countingReader struct {
	r   io.Reader
	mu  sync.Mutex
	n   int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.mu.Lock()
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	return n, err
}

func (c *countingReader) result() (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n, c.err
}

// uploadCat is Upload without SFTP: cat writes the temporary file, then,
// once its size is checked against what was sent (a failed read of r looks
// like the end of the data to cat), a second command sets its mode and
// renames it.
func (c *Client) uploadCat(ctx context.Context, r io.Reader, tmp, remotePath string, perm os.FileMode) error {
	cr := &countingReader{r: r}
	var stderr limitedBuffer
	cmd := "umask 077 && exec cat > " + Quote(tmp)
	if _, err := c.exec(ctx, "upload (cat)", cmd, cr, nil, &stderr); err != nil {
		return withStderr(err, &stderr)
	}
	n, rerr := cr.result()
	if rerr != nil {
		return fmt.Errorf("reading the data to upload: %w", rerr)
	}
	stderr.Reset()
	cmd = fmt.Sprintf(`[ "$(( $(wc -c < %[1]s) ))" -eq %[2]d ] || { echo "size mismatch: the file did not arrive in full" >&2; exit 1; }; chmod %[3]o -- %[1]s && mv -f -- %[1]s %[4]s`,
		Quote(tmp), n, perm, Quote(remotePath))
	if _, err := c.exec(ctx, "upload (rename)", cmd, nil, nil, &stderr); err != nil {
		return withStderr(err, &stderr)
	}
	return nil
}

// removeTemp removes what is left of a failed upload, best effort, even
// when ctx is done.
func (c *Client) removeTemp(ctx context.Context, tmp string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if _, err := c.exec(rctx, "remove partial upload", "rm -f -- "+Quote(tmp), nil, nil, nil); err != nil {
		c.log.Warn("ssh: could not remove a partial upload", "path", tmp, "err", err)
	}
}

// Download copies remotePath on the device to w. A file that does not exist
// gives an error wrapping fs.ErrNotExist. It uses SFTP, or cat when the
// server has no sftp subsystem. When ctx is done it stops and returns an
// error wrapping ctx.Err(); w may have received part of the file.
func (c *Client) Download(ctx context.Context, remotePath string, w io.Writer) error {
	if remotePath == "" || strings.IndexByte(remotePath, 0) >= 0 {
		return c.errorf("download: invalid remote path %q", remotePath)
	}
	s, stop, err := c.openSFTP(ctx)
	switch {
	case errors.Is(err, errNoSFTP):
		err = c.downloadCat(ctx, remotePath, w)
	case err != nil:
	default:
		err = downloadSFTP(ctx, s, remotePath, w)
		stop()
		s.close()
	}
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return c.errorf("download %s: %w (%v)", remotePath, ctx.Err(), err)
	}
	return c.errorf("download %s: %w", remotePath, err)
}

func downloadSFTP(ctx context.Context, s *sftpSession, remotePath string, w io.Writer) error {
	f, err := s.sc.Open(remotePath)
	if err != nil {
		return err
	}
	defer f.Close()
	done := make(chan error, 1)
	go func() {
		_, err := f.WriteTo(w)
		done <- err
	}()
	select {
	case err = <-done:
		return err
	case <-ctx.Done():
		// The session is closed by now, which ends the copy; wait for it so
		// that nothing writes to w after Download returns.
		<-done
		return ctx.Err()
	}
}

func (c *Client) downloadCat(ctx context.Context, remotePath string, w io.Writer) error {
	var stderr limitedBuffer
	cmd := fmt.Sprintf("[ -e %[1]s ] || exit %[2]d; exec cat -- %[1]s", Quote(remotePath), notFoundStatus)
	code, err := c.exec(ctx, "download (cat)", cmd, nil, w, &stderr)
	if code == notFoundStatus {
		return fs.ErrNotExist
	}
	return withStderr(err, &stderr)
}

// limitedBuffer keeps the first 4 KiB written to it.
type limitedBuffer struct {
	bytes.Buffer
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := 4096 - b.Len(); room > 0 {
		if len(p) < room {
			room = len(p)
		}
		b.Buffer.Write(p[:room])
	}
	return len(p), nil
}

// withStderr adds what a failed command wrote to its standard error to err.
func withStderr(err error, stderr *limitedBuffer) error {
	if err == nil {
		return nil
	}
	if msg := strings.TrimSpace(stderr.String()); msg != "" {
		return fmt.Errorf("%w: %s", err, msg)
	}
	return err
}
