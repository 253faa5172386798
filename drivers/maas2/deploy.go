package maas2

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/maas2/maasapi"
	"github.com/flingerlab/flinger/drivers/osrelease"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
)

// provisionKeys are the provision_data keys the driver reads (skip is
// the worker's).
var provisionKeys = []string{"distro", "kernel", "user_data", "disks", "ephemeral", "skip"}

// deployRequest is what a job asks MAAS to deploy.
type deployRequest struct {
	distro, kernel string
	userData       []byte // nil: none
	disks          *layout
	ephemeral      bool
}

// parseProvisionData reads and checks provision_data. Every error names
// the key.
func parseProvisionData(pd events.Data) (deployRequest, error) {
	r := deployRequest{distro: DefaultDistro}
	for _, k := range slices.Sorted(maps.Keys(pd)) {
		if !slices.Contains(provisionKeys, k) {
			return r, fmt.Errorf("provision_data.%s: unknown key for a maas2 device (known: %s)",
				display.Printable(k), strings.Join(provisionKeys[:5], ", "))
		}
	}
	name := func(key, v string) error {
		if len(v) > 128 || strings.ContainsFunc(v, func(c rune) bool { return unicode.IsSpace(c) || unicode.IsControl(c) }) {
			return fmt.Errorf("provision_data.%s: %s is not a MAAS %s name", key, display.Printable(v), key)
		}
		return nil
	}
	var err error
	if r.distro, err = pd.String("distro", DefaultDistro); err != nil {
		return r, fmt.Errorf("provision_data.%w", err)
	}
	if r.distro == "" {
		r.distro = DefaultDistro
	}
	if err := name("distro", r.distro); err != nil {
		return r, err
	}
	if r.kernel, err = pd.String("kernel", ""); err != nil {
		return r, fmt.Errorf("provision_data.%w", err)
	}
	if err := name("kernel", r.kernel); err != nil {
		return r, err
	}
	if v, ok := pd["user_data"]; ok && v != nil {
		s, ok := v.(string)
		if !ok {
			return r, fmt.Errorf("provision_data.user_data: must be a string (cloud-init user data), got %s", events.TypeName(v))
		}
		if s != "" {
			r.userData = []byte(s)
		}
	}
	if r.ephemeral, err = pd.Bool("ephemeral", false); err != nil {
		return r, fmt.Errorf("provision_data.%w", err)
	}
	if v, ok := pd["disks"]; ok && v != nil {
		if list, ok := v.([]any); !ok || len(list) > 0 {
			if r.disks, err = parseLayout(v, "provision_data.disks", r.ephemeral); err != nil {
				return r, err
			}
		}
	}
	return r, nil
}

// provisionFailure makes err, from a step of provisioning, the phase's
// error: MAAS refusing what was asked is a *drivers.ProvisioningError
// (the machine stays in service); MAAS not answering, or refusing the
// key, is a plain failure; provisioning and recovery failures and
// cancellation stay what they are.
func (s *session) provisionFailure(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("maas2 provision: %s: %w", what, ctx.Err())
	}
	var pe *drivers.ProvisioningError
	if drivers.IsRecovery(err) || errors.As(err, &pe) {
		return err
	}
	if !unreachable(err) {
		return &drivers.ProvisioningError{Err: fmt.Errorf("%s: %w", what, err)}
	}
	return fmt.Errorf("maas2 provision: %s: %w", what, s.keyNote(err))
}

// provisioningf returns a *drivers.ProvisioningError of the message.
func provisioningf(format string, args ...any) error {
	return &drivers.ProvisioningError{Err: fmt.Errorf(format, args...)}
}

// provision checks the request against the machine, then deploys it.
func (s *session) provision(ctx context.Context, req deployRequest) error {
	o := s.d.opts
	m, err := s.api.Machine(ctx, s.node)
	if err != nil {
		return s.provisionFailure(ctx, "reading machine "+s.node, err)
	}
	s.printf("MAAS at %s: machine %s (%s) is %s", s.api.Server(), s.node, display.Printable(m.Hostname), describe(m))
	l := req.disks
	if l == nil {
		l = o.defaultDisks
	}
	var pl *plan
	if l != nil {
		devs, err := s.api.BlockDevices(ctx, s.node)
		if err != nil {
			return s.provisionFailure(ctx, "reading the disks of machine "+s.node, err)
		}
		if pl, err = l.plan(devs, s.node); err != nil {
			return &drivers.ProvisioningError{Err: err}
		}
	}
	if req.ephemeral {
		v, err := s.api.Version(ctx)
		if err != nil {
			return s.provisionFailure(ctx, "reading the MAAS version", err)
		}
		ok, err := v.AtLeast(3, 5)
		if err != nil {
			return &drivers.ProvisioningError{Err: fmt.Errorf("provision_data.ephemeral: %w", err)}
		}
		if !ok {
			return &drivers.ProvisioningError{Err: fmt.Errorf("provision_data.ephemeral: ephemeral deployments need MAAS 3.5 or later, and MAAS at %s is %s",
				s.api.Server(), display.Printable(v.Version))}
		}
	}
	if o.resetEFI {
		s.resetEFI(ctx)
	}
	if o.clearTPM {
		if err := s.clearTPM(ctx); err != nil {
			return err
		}
	}
	return s.deploy(ctx, req, pl)
}

// deploy releases the machine, sets its storage, allocates and deploys
// it, and waits for it to be deployed and to answer (steps 3 to 7 of the
// package documentation).
func (s *session) deploy(ctx context.Context, req deployRequest, pl *plan) error {
	if err := s.release(ctx); err != nil {
		return s.provisionFailure(ctx, "releasing the machine", err)
	}
	switch {
	case pl != nil:
		s.printf("Storage: applying %s to machine %s", pl.l.source, s.node)
		if err := s.applyLayout(ctx, pl); err != nil {
			return s.provisionFailure(ctx, "setting the storage", err)
		}
	default:
		s.printf("Storage: neither provision_data.disks nor default_disks given: setting MAAS's flat layout")
		if _, err := s.api.SetStorageLayout(ctx, s.node, "flat"); err != nil {
			if ctx.Err() != nil || unreachable(err) {
				return s.provisionFailure(ctx, "setting the flat storage layout", err)
			}
			s.printf("Storage: MAAS did not set the flat layout (%v); carrying on with the machine's layout", err)
		}
	}

	// From here on, a cancelled phase releases the machine, even if the
	// allocation request was cut short after MAAS carried it out.
	defer func() {
		if ctx.Err() != nil {
			s.releaseCancelled(ctx)
		}
	}()
	s.printf("MAAS: allocating machine %s", s.node)
	if _, err := s.api.Allocate(ctx, s.node, s.comment("allocation")); err != nil {
		return s.provisionFailure(ctx, "allocating machine "+s.node, err)
	}
	startID := s.latestInstallation(ctx)

	var extras []string
	if req.kernel != "" {
		extras = append(extras, "kernel "+req.kernel)
	}
	if req.userData != nil {
		extras = append(extras, fmt.Sprintf("%d bytes of user data", len(req.userData)))
	}
	if req.ephemeral {
		extras = append(extras, "ephemeral (in memory)")
	}
	with := ""
	if len(extras) > 0 {
		with = " with " + strings.Join(extras, ", ")
	}
	s.printf("MAAS: deploying %s%s on machine %s", req.distro, with, s.node)
	_, err := s.api.Deploy(ctx, s.node, maasapi.DeployParams{
		DistroSeries: req.distro, HWEKernel: req.kernel, UserData: req.userData, Ephemeral: req.ephemeral,
		Comment: s.comment("deployment"),
	})
	if err != nil {
		return s.provisionFailure(ctx, "deploying machine "+s.node, err)
	}
	if err := s.waitDeployed(ctx, startID); err != nil {
		return s.provisionFailure(ctx, "deploying machine "+s.node, err)
	}
	if err := s.checkBooted(ctx, req); err != nil {
		return s.provisionFailure(ctx, "checking the deployed machine", err)
	}
	return nil
}

// releaseCancelled releases the machine when the phase was cancelled
// after allocating it, without waiting, so that cancelling stays prompt;
// MAAS finishes the release on its own.
func (s *session) releaseCancelled(ctx context.Context) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cancelReleaseTimeout)
	defer cancel()
	s.printf("MAAS: provisioning cancelled: releasing machine %s", s.node)
	if _, err := s.api.Release(rctx, s.node, s.comment("release: provisioning cancelled")); err != nil {
		s.printf("MAAS: the release was not sent (%v); the next job's provisioning or this job's cleanup releases the machine", err)
		s.log.Warn("maas2: release after cancellation failed", "err", err)
	}
}

// latestInstallation returns the id of the machine's latest installation
// result (0: none, or MAAS would not say), to tell the new one apart.
func (s *session) latestInstallation(ctx context.Context) int {
	sets, err := s.api.ScriptResults(ctx, s.node, "installation")
	if err != nil {
		s.log.Info("maas2: reading the installation results", "err", err)
		return 0
	}
	id := 0
	for _, rs := range sets {
		id = max(id, rs.ID)
	}
	return id
}

// showInstallation writes the installation output of the deployment
// (results newer than startID) to the job's output, as Testflinger's
// get_deployment_information does.
func (s *session) showInstallation(ctx context.Context, startID int) {
	sets, err := s.api.ScriptResults(ctx, s.node, "installation")
	if err != nil {
		s.printf("MAAS: the installation output could not be read: %v", err)
		return
	}
	id := 0
	for _, rs := range sets {
		if rs.ID > startID {
			id = max(id, rs.ID)
		}
	}
	if id == 0 {
		s.printf("MAAS: no installation output for this deployment")
		return
	}
	text, err := s.api.DownloadScriptResult(ctx, s.node, id)
	if err != nil {
		s.printf("MAAS: the installation output could not be read: %v", err)
		return
	}
	text = s.api.Mask(text)
	if !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	fmt.Fprintf(s.w, "----- installation output of machine %s (MAAS script result %d) -----\n%s----- end of the installation output -----\n", s.node, id, text)
}

// waitDeployed polls the machine until MAAS reports it Deployed, for up
// to timeout_min. Failed deployment and a timeout are errors, after the
// installation output was shown.
func (s *session) waitDeployed(ctx context.Context, startID int) error {
	start := time.Now()
	last := ""
	var status string
	var failure error
	done, err := s.poll(ctx, s.d.opts.deployTimeout, func(ctx context.Context) (bool, error) {
		m, err := s.api.Machine(ctx, s.node)
		if err != nil {
			return false, err
		}
		status = m.StatusName
		if d := describe(m); d != last {
			s.printf("MAAS: machine %s is %s (%s since the deployment started)", s.node, d, time.Since(start).Round(time.Second))
			last = d
		}
		switch m.StatusName {
		case maasapi.StatusDeployed:
			return true, nil
		case maasapi.StatusDeploying, maasapi.StatusAllocated:
			return false, nil
		case maasapi.StatusFailedDeployment:
			failure = provisioningf("MAAS reports Failed deployment of machine %s: %s (the installation output is in the job's output)", s.node, display.Printable(m.StatusMessage))
		default:
			failure = provisioningf("machine %s went %s during its deployment", s.node, describe(m))
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	if failure != nil {
		s.showInstallation(ctx, startID)
		return failure
	}
	if !done {
		s.showInstallation(ctx, startID)
		return provisioningf("machine %s is still %s after %s (timeout_min %d)", s.node, status,
			time.Since(start).Round(time.Second), int(s.d.opts.deployTimeout/time.Minute))
	}
	return nil
}

// checkBooted checks a deployed machine: device_ip is among the
// addresses MAAS reports, the system answers SSH as ubuntu, and it runs
// the release asked for. The device's recorded host key is forgotten
// first: a new installation has a new key.
func (s *session) checkBooted(ctx context.Context, req deployRequest) error {
	o := s.d.opts
	dev := s.dev
	deadline := time.Now().Add(o.bootTimeout)
	var addresses []string
	found, err := s.poll(ctx, o.bootTimeout, func(ctx context.Context) (bool, error) {
		m, err := s.api.Machine(ctx, s.node)
		if err != nil {
			return false, err
		}
		addresses = m.IPAddresses
		return slices.Contains(m.IPAddresses, dev.DeviceIP), nil
	})
	if err != nil {
		return err
	}
	if !found {
		reported := "no address"
		if len(addresses) > 0 {
			reported = strings.Join(addresses, ", ")
		}
		s.printf("MAAS reports machine %s at %s, and device_ip is %s", s.node, reported, dev.DeviceIP)
		return provisioningf("device_ip %s is not among the addresses MAAS reports for machine %s (%s) after %s: check the device's device_ip and the machine's network configuration in MAAS",
			dev.DeviceIP, s.node, reported, o.bootTimeout)
	}
	s.printf("MAAS reports machine %s at %s", s.node, strings.Join(addresses, ", "))

	if err := dev.SSHSettings().Policy().Reset(dev.Name); err != nil {
		return fmt.Errorf("forgetting the previous installation's host key: %w", err)
	}
	cfg, err := s.sshConfig()
	if err != nil {
		return err
	}
	s.printf("Waiting for %s@%s to answer ssh", cfg.User, cfg.Addr)
	wctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	c, err := sshx.WaitForSSH(wctx, cfg, dev.Name, o.sshInterval)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return provisioningf("machine %s is Deployed but does not answer ssh as %s@%s within %s: %w", s.node, cfg.User, cfg.Addr, o.bootTimeout, err)
	}
	defer c.Close()
	if _, err := run(wctx, c, []string{"/bin/true"}, ""); err != nil {
		return s.sshFailure(ctx, "running /bin/true", err)
	}
	osr, err := run(wctx, c, []string{"cat", "/etc/os-release"}, "")
	if err != nil {
		return s.sshFailure(ctx, "reading /etc/os-release", err)
	}
	rel := osrelease.Parse(osr)
	want := strings.TrimPrefix(req.distro, "ubuntu/")
	if rel["ID"] == "ubuntu" && !strings.Contains(want, "/") && want != rel["VERSION_CODENAME"] && want != rel["VERSION_ID"] {
		return provisioningf("machine %s runs %s (%s) where the job asked for %s", s.node,
			display.Printable(rel["PRETTY_NAME"]), display.Printable(rel["VERSION_CODENAME"]), display.Printable(req.distro))
	}
	s.printf("Machine %s is deployed and answers: %s", s.node, display.Printable(rel["PRETTY_NAME"]))
	return nil
}

// sshFailure reports a command that failed on the deployed machine.
func (s *session) sshFailure(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return provisioningf("%s on machine %s: %w", what, s.node, err)
}

// sshConfig returns how to log in to the machine: as ubuntu, the user
// MAAS creates, with the host's key file (and Testflinger's default
// password).
func (s *session) sshConfig() (sshx.Config, error) {
	cfg, err := s.dev.SSHSettings().DeviceConfig(s.dev, nil, s.log)
	if err != nil {
		return sshx.Config{}, err
	}
	cfg.User = MachineUser
	return cfg, nil
}
