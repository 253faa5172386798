// Package drivers holds the Driver interface that every connector type
// implements, the typed outcomes that phases end with, the registry of
// drivers by connector type and the device configuration they read.
// Drivers know nothing of NATS: a worker calls them one phase at a time.
package drivers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/events"
)

// Exit statuses of Testflinger's connector command line.
const (
	// ExitOK: the phase succeeded.
	ExitOK = 0
	// ExitFailed: the phase failed.
	ExitFailed = 1
	// ExitRecoveryFailed: the device could not be recovered and must be taken out of service.
	ExitRecoveryFailed = 46
)

// Run is what a driver is given for one phase of one job.
type Run struct {
	// Job is the job being run.
	Job *events.Job
	// Device is the configuration of the device running it.
	Device *DeviceConfig
	// Dir is the job's run directory: testflinger.json, device-info.json,
	// attachments/ and artifacts/ live there, and commands run there.
	Dir string
	// Out receives the phase's output as it is produced.
	Out io.Writer
	// Env is the environment for commands the phase runs (KEY=VALUE): the
	// worker's environment, the device's env, AGENT_NAME and REBOOT_SCRIPT.
	Env []string
	// Log is for the driver's own diagnostics (not the job's output).
	Log *slog.Logger
	// Images is the lab host's image cache, shared by its devices, so that
	// devices provisioned with the same image download it once (nil: no
	// cache; every device downloads).
	Images *image.Cache
	// Progress, if not nil, receives how far the writing of an image has
	// got; the worker publishes it as provision_progress events.
	Progress func(image.Progress)
	// Jobs, if not nil, creates and follows other jobs on the job's
	// behalf: the child jobs of a multi-device job. The worker sets it;
	// the connector command line, which has no lab to submit to, does not.
	Jobs JobService
}

// ReportProgress passes p to run.Progress when it is set.
func (r *Run) ReportProgress(p image.Progress) {
	if r.Progress != nil {
		r.Progress(p)
	}
}

// Logger returns r.Log, or a logger that discards when it is nil.
func (r *Run) Logger() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

// Driver drives one kind of device through the phases of a job. Each
// method blocks until its phase is done or ctx is cancelled, writes what it
// does to run.Out, and ends with nil, a *RecoveryError when the device
// cannot be brought back, or another error when the phase failed.
type Driver interface {
	// Provision installs the job's image on the device (provision_data).
	Provision(ctx context.Context, run *Run) error
	// FirmwareUpdate updates the device's firmware (firmware_update_data).
	FirmwareUpdate(ctx context.Context, run *Run) error
	// RunTest runs test_data.test_cmds and returns their exit status; an
	// error means the commands could not be run at all.
	RunTest(ctx context.Context, run *Run) (int, error)
	// Allocate readies the device to be held for a multi-device job and
	// returns the device information that job is given.
	Allocate(ctx context.Context, run *Run) (map[string]any, error)
	// Reserve gives the job's users access to the device (reserve_data);
	// the worker then holds the device for the reservation's length.
	Reserve(ctx context.Context, run *Run) error
	// Cleanup returns the device to a state the next job can start from.
	Cleanup(ctx context.Context, run *Run) error
}

// RecoveryError reports that the device could not be recovered: the job
// ends with recovery_fail, the device goes offline with health bad, and the
// connector command line exits 46.
type RecoveryError struct {
	// Err is what went wrong.
	Err error
}

func (e *RecoveryError) Error() string { return "device could not be recovered: " + e.Err.Error() }

// Unwrap returns the cause.
func (e *RecoveryError) Unwrap() error { return e.Err }

// Recovery wraps err, formatted as by fmt.Errorf, in a *RecoveryError.
func Recovery(format string, args ...any) error {
	return &RecoveryError{Err: fmt.Errorf(format, args...)}
}

// ProvisioningError reports that provisioning failed while the device
// itself is still usable: the job fails, the device stays in service.
type ProvisioningError struct {
	// Err is what went wrong.
	Err error
}

func (e *ProvisioningError) Error() string { return "provisioning failed: " + e.Err.Error() }

// Unwrap returns the cause.
func (e *ProvisioningError) Unwrap() error { return e.Err }

// IsRecovery reports whether err is or wraps a *RecoveryError.
func IsRecovery(err error) bool {
	var re *RecoveryError
	return errors.As(err, &re)
}

// ExitCode maps a phase's error to Testflinger's connector exit status:
// 0 for nil, 46 for a recovery failure, 1 for any other error.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case IsRecovery(err):
		return ExitRecoveryFailed
	}
	return ExitFailed
}
