package maas2

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/sshx"
)

// TPMRequestPath is the TPM's physical presence request file; writing 5
// asks the firmware to clear the TPM at the next boot.
const TPMRequestPath = "/sys/class/tpm/tpm0/ppi/request"

// sshStepTimeout bounds each SSH step of reset_efi and clear_tpm
// (connecting, or one command), as Testflinger's 30 s timeouts do.
const sshStepTimeout = 30 * time.Second

// dial logs in to the system running on the machine, for reset_efi and
// clear_tpm.
func (s *session) dial(ctx context.Context) (*sshx.Client, error) {
	cfg, err := s.sshConfig()
	if err != nil {
		return nil, err
	}
	cfg.DialTimeout = sshStepTimeout
	dctx, cancel := context.WithTimeout(ctx, sshStepTimeout)
	defer cancel()
	return sshx.Dial(dctx, cfg, s.dev.Name)
}

// run runs argv on c within sshStepTimeout and returns its output.
func run(ctx context.Context, c *sshx.Client, argv []string, stdin string) (string, error) {
	rctx, cancel := context.WithTimeout(ctx, sshStepTimeout)
	defer cancel()
	var stdout, stderr strings.Builder
	var code int
	var err error
	if stdin != "" {
		code, err = c.RunInput(rctx, argv, strings.NewReader(stdin), &stdout, &stderr)
	} else {
		code, err = c.Run(rctx, argv, &stdout, &stderr)
	}
	var exit *sshx.ExitError
	if err != nil && !errors.As(err, &exit) {
		return "", err
	}
	if code != 0 {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return stdout.String(), fmt.Errorf("%s exited with status %d: %s", strings.Join(argv, " "), code, display.Printable(msg))
	}
	return stdout.String(), nil
}

var bootEntry = regexp.MustCompile(`^Boot([0-9A-Fa-f]{4})\*?$`)

// efiOrder computes Testflinger's reset_efi boot order from efibootmgr
// -v's output: the current boot entry first if it is an IPv4 network
// entry, then the other IPv4 entries in the order listed, then the rest
// of the current order. It returns the current order too.
func efiOrder(listing string) (current, next []string, err error) {
	bootCurrent := ""
	var ipv4 []string
	sc := bufio.NewScanner(strings.NewReader(listing))
	for sc.Scan() {
		key, value, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		switch {
		case key == "BootCurrent:":
			bootCurrent = strings.TrimSpace(value)
		case key == "BootOrder:":
			for _, e := range strings.Split(strings.TrimSpace(value), ",") {
				if e = strings.TrimSpace(e); e != "" {
					current = append(current, e)
				}
			}
		default:
			if m := bootEntry.FindStringSubmatch(key); m != nil && strings.Contains(value, "IPv4") {
				ipv4 = append(ipv4, m[1])
			}
		}
	}
	if current == nil {
		return nil, nil, fmt.Errorf("efibootmgr shows no BootOrder")
	}
	if slices.Contains(ipv4, bootCurrent) {
		next = append(next, bootCurrent)
	}
	for _, e := range ipv4 {
		if !slices.Contains(next, e) {
			next = append(next, e)
		}
	}
	for _, e := range current {
		if !slices.Contains(next, e) {
			next = append(next, e)
		}
	}
	return current, next, nil
}

// resetEFI puts the machine's network boot entries first in its UEFI
// boot order, over SSH on the system it runs, as Testflinger's reset_efi
// does. Its failures are reported and ignored: the machine may not be
// running a system that answers.
func (s *session) resetEFI(ctx context.Context) {
	s.printf("EFI: putting network boot first in the boot order of machine %s", s.node)
	c, err := s.dial(ctx)
	if err != nil {
		s.printf("EFI: the machine does not answer ssh (%v); leaving its boot order", err)
		return
	}
	defer c.Close()
	listing, err := run(ctx, c, []string{"sudo", "efibootmgr", "-v"}, "")
	if err != nil {
		s.printf("EFI: reading the boot order failed (%v); leaving it", err)
		return
	}
	current, next, err := efiOrder(listing)
	if err != nil {
		s.printf("EFI: %v; leaving the boot order", err)
		return
	}
	if slices.Equal(current, next) {
		s.printf("EFI: the boot order %s already puts network boot first", strings.Join(current, ","))
		return
	}
	order := strings.Join(next, ",")
	s.printf("EFI: setting the boot order to %s (was %s)", order, strings.Join(current, ","))
	if _, err := run(ctx, c, []string{"sudo", "efibootmgr", "-o", order}, ""); err != nil {
		s.printf("EFI: setting the boot order failed: %v", err)
	}
}

// requestTPMClear asks the TPM of the running system to clear itself at
// the next boot and reads the request back; it returns why it could not.
func (s *session) requestTPMClear(ctx context.Context) error {
	c, err := s.dial(ctx)
	if err != nil {
		return fmt.Errorf("the machine does not answer ssh: %w", err)
	}
	defer c.Close()
	if _, err := run(ctx, c, []string{"sudo", "tee", TPMRequestPath}, "5\n"); err != nil {
		return err
	}
	got, err := run(ctx, c, []string{"cat", TPMRequestPath}, "")
	if err != nil {
		return err
	}
	if strings.TrimSpace(got) != "5" {
		return fmt.Errorf("%s reads %s after writing 5", TPMRequestPath, display.Printable(strings.TrimSpace(got)))
	}
	return nil
}

// clearTPM asks the machine's TPM to clear itself at the next boot, as
// Testflinger's clear_tpm does: on the running system, else after
// deploying the default release (with the device's default storage).
func (s *session) clearTPM(ctx context.Context) error {
	s.printf("TPM: asking the TPM of machine %s to clear at the next boot", s.node)
	err := s.requestTPMClear(ctx)
	if err == nil {
		s.printf("TPM: clear requested")
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("maas2 provision: clearing the TPM: %w", ctx.Err())
	}
	s.printf("TPM: not possible on the running system (%v): deploying %s to do it there", err, DefaultDistro)
	var pl *plan
	if l := s.d.opts.defaultDisks; l != nil {
		devs, err := s.api.BlockDevices(ctx, s.node)
		if err != nil {
			return s.provisionFailure(ctx, "reading the disks of machine "+s.node, err)
		}
		if pl, err = l.plan(devs, s.node); err != nil {
			return &drivers.ProvisioningError{Err: err}
		}
	}
	if err := s.deploy(ctx, deployRequest{distro: DefaultDistro}, pl); err != nil {
		return err
	}
	if err := s.requestTPMClear(ctx); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("maas2 provision: clearing the TPM: %w", ctx.Err())
		}
		return &drivers.ProvisioningError{Err: fmt.Errorf("failed to clear the TPM of machine %s: %w", s.node, err)}
	}
	s.printf("TPM: clear requested")
	return nil
}
