// Package connector is Testflinger's device connector command line on top
// of Flinger's drivers, so that an unchanged Testflinger agent (its charm's
// tf-provision, tf-test, ... scripts) can call
//
//	flinger connector TYPE STAGE -c default.yaml testflinger.json
//
// in place of testflinger-device-connector (canonical/testflinger,
// device-connectors/src/testflinger_device_connectors/cmd.py). Like it,
// Run writes device-info.json on every invocation, records a failing
// stage in device-connector-error.json and exits 0, 1 or 46 (runtest: the
// test's own exit status).
package connector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
)

// The stages of Testflinger's connector command line.
const (
	// StageProvision installs the job's image (Driver.Provision).
	StageProvision = "provision"
	// StageFirmwareUpdate updates the device's firmware (Driver.FirmwareUpdate).
	StageFirmwareUpdate = "firmware_update"
	// StageRuntest runs test_data.test_cmds (Driver.RunTest); Testflinger
	// calls this stage runtest, not test.
	StageRuntest = "runtest"
	// StageAllocate readies the device for a multi-device job (Driver.Allocate).
	StageAllocate = "allocate"
	// StageReserve gives the job's users the device, then holds it for the
	// reservation's length (Driver.Reserve).
	StageReserve = "reserve"
	// StageCleanup returns the device to a usable state (Driver.Cleanup).
	StageCleanup = "cleanup"
)

// Stages lists the stages in the order Testflinger's cmd.py lists them.
var Stages = []string{StageProvision, StageFirmwareUpdate, StageRuntest, StageAllocate, StageReserve, StageCleanup}

// Options is one invocation of the connector command line.
type Options struct {
	// Type is the connector type (TYPE): a registered driver type or alias,
	// such as fake_connector or fake.
	Type string
	// Stage is the stage to run (STAGE), one of Stages.
	Stage string
	// ConfigPath is the device configuration (-c/--config): Testflinger's
	// default.yaml for the device. A relative path is taken from Dir.
	ConfigPath string
	// JobPath is the job (testflinger.json as the agent writes it). A
	// relative path is taken from Dir.
	JobPath string
	// Dir is the working directory: device-info.json and
	// device-connector-error.json are written there and commands run
	// there ("": ".").
	Dir string
	// Stdout receives the stage's output as it is produced (nil: discarded).
	Stdout io.Writer
	// Stderr receives the command's own error messages (nil: discarded).
	Stderr io.Writer
	// Env is the environment the device's env, AGENT_NAME and
	// REBOOT_SCRIPT are added to for the commands a stage runs (nil: this
	// process's environment).
	Env []string
	// Log is for diagnostics (nil: discarded).
	Log *slog.Logger
	// SSH, when not nil, are the SSH settings the device is reached with
	// (host key policy, key file, key servers) instead of the defaults
	// (drivers.DefaultSSHSettings): a host file's, or a test's.
	SSH *drivers.SSHSettings
}

// reservePoll is how often a reservation's hold checks its clock against
// the wall clock (a suspended machine makes a timer late).
const reservePoll = time.Minute

// Run runs one stage as Testflinger's device connector does and returns
// the process's exit status:
//
//   - an unknown Type or Stage: 1, with a message listing the valid ones,
//     and no file written;
//   - the device configuration is read leniently (see LoadDevice), then
//     device-info.json is written in Dir, on every invocation;
//   - the job is read leniently (see LoadJob) and the driver is built;
//   - the stage runs with its output going to Stdout as it is produced,
//     commands running in Dir with Env, the device's env, AGENT_NAME and
//     REBOOT_SCRIPT (runtest also gets test_data.secrets, as in Testflinger,
//     and their values are masked in its output and error);
//   - allocate writes the device information the driver returns to
//     device-info.json; reserve then holds the device for
//     reserve_data.timeout seconds (default 3600) or until ctx is done;
//   - success is 0, or for runtest the test's exit status. Any failure,
//     from reading the files to the stage itself, is recorded under
//     "<stage>_exception_info" in device-connector-error.json (merged with
//     what the file already holds) and gives 46 when it is a
//     *drivers.RecoveryError, else 1 (runtest cut short by ctx: the status
//     of the killed test, 128+signal).
func Run(ctx context.Context, opts Options) int {
	stdout, stderr := orDiscard(opts.Stdout), orDiscard(opts.Stderr)
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	typ, ok := drivers.Canonical(opts.Type)
	if !ok {
		fmt.Fprintf(stderr, "unknown connector type %q; valid types: %s\n", opts.Type, validTypes())
		return drivers.ExitFailed
	}
	if !slices.Contains(Stages, opts.Stage) {
		hint := ""
		if opts.Stage == string(events.PhaseTest) {
			hint = " (the test phase's stage is runtest)"
		}
		fmt.Fprintf(stderr, "unknown stage %q%s; valid stages: %s\n", opts.Stage, hint, strings.Join(Stages, ", "))
		return drivers.ExitFailed
	}
	dir := opts.Dir
	if dir == "" {
		dir = "."
	}
	log = log.With("type", typ, "stage", opts.Stage)

	var masker *drivers.Masker
	rc, err := runStage(ctx, opts, typ, dir, stdout, log, &masker)
	if err == nil {
		log.Debug("stage done", "rc", rc)
		return rc
	}
	info := Describe(err)
	info.Message = masker.String(info.Message)
	if info.Cause != nil {
		c := masker.String(*info.Cause)
		info.Cause = &c
	}
	fmt.Fprintf(stderr, "%s %s: %s: %s\n", typ, opts.Stage, info.Name, masker.String(err.Error()))
	if werr := recordError(dir, opts.Stage, info); werr != nil {
		fmt.Fprintf(stderr, "%s %s: %v\n", typ, opts.Stage, werr)
	}
	code := drivers.ExitCode(err)
	if opts.Stage == StageRuntest && code == drivers.ExitFailed && rc > 0 {
		code = rc // the killed test's status, as a shell would report it
	}
	log.Debug("stage failed", "rc", code, "err", err)
	return code
}

// runStage does the work of Run once the type and stage are known. It
// returns the stage's exit status when err is nil (and runtest's status
// along with an error when the test was cut short).
//
// For runtest, *masker is set to the masker of test_data.secrets: the
// stage's output is masked, and Run masks its error.
func runStage(ctx context.Context, opts Options, typ, dir string, stdout io.Writer, log *slog.Logger, masker **drivers.Masker) (int, error) {
	cfg, err := LoadDevice(inDir(dir, opts.ConfigPath), typ)
	if err != nil {
		return drivers.ExitFailed, err
	}
	cfg.SSH = opts.SSH
	if err := writeDeviceInfo(dir, cfg.DeviceInfo()); err != nil {
		return drivers.ExitFailed, err
	}
	job, err := LoadJob(inDir(dir, opts.JobPath))
	if err != nil {
		return drivers.ExitFailed, err
	}
	drv, err := drivers.New(cfg)
	if err != nil {
		return drivers.ExitFailed, err
	}
	base := opts.Env
	if base == nil {
		base = os.Environ()
	}
	run := &drivers.Run{
		Job:    job,
		Device: cfg,
		Dir:    dir,
		Out:    stdout,
		Env:    cfg.Environ(base),
		Log:    log,
	}
	log.Debug("running stage", "device", cfg.Name, "job", job.JobID)

	switch opts.Stage {
	case StageProvision:
		return drivers.ExitOK, drv.Provision(ctx, run)
	case StageFirmwareUpdate:
		return drivers.ExitOK, drv.FirmwareUpdate(ctx, run)
	case StageRuntest:
		if job.TestData != nil && len(job.TestData.Secrets) > 0 {
			run.Env = withSecrets(run.Env, job.TestData.Secrets)
			values := make([]string, 0, len(job.TestData.Secrets))
			for _, v := range job.TestData.Secrets {
				values = append(values, v)
			}
			*masker = drivers.NewMasker(values)
			mw := (*masker).Writer(stdout)
			defer mw.Close()
			run.Out = mw
		}
		return drv.RunTest(ctx, run)
	case StageAllocate:
		info, err := drv.Allocate(ctx, run)
		if err != nil {
			return drivers.ExitFailed, err
		}
		if info != nil {
			if err := writeDeviceInfo(dir, map[string]any{"device_info": info}); err != nil {
				return drivers.ExitFailed, err
			}
		}
		return drivers.ExitOK, nil
	case StageReserve:
		if err := drv.Reserve(ctx, run); err != nil {
			return drivers.ExitFailed, err
		}
		hold(ctx, job, log)
		return drivers.ExitOK, nil
	case StageCleanup:
		return drivers.ExitOK, drv.Cleanup(ctx, run)
	}
	return drivers.ExitFailed, fmt.Errorf("unknown stage %q", opts.Stage) // checked by Run
}

// hold keeps the device reserved for reserve_data.timeout (default
// events.DefaultReserveTimeout), as Testflinger's reserve sleeps, or until
// ctx is done: ending a reservation early is not a failure.
func hold(ctx context.Context, job *events.Job, log *slog.Logger) {
	length := events.DefaultReserveTimeout
	if rd := job.ReserveData; rd != nil && rd.Timeout > 0 {
		length = time.Duration(rd.Timeout) * time.Second
	}
	end := time.Now().Add(length)
	log.Info("holding the reservation", "length", length, "until", end.Format(time.RFC3339))
	for {
		left := time.Until(end)
		if left <= 0 {
			log.Info("reservation over")
			return
		}
		t := time.NewTimer(min(left, reservePoll))
		select {
		case <-ctx.Done():
			t.Stop()
			log.Info("reservation ended early", "cause", context.Cause(ctx))
			return
		case <-t.C:
		}
	}
}

// withSecrets adds test_data.secrets to env (sorted by name), later
// values winning, as Testflinger's runtest injects them after the device's
// env.
func withSecrets(env []string, secrets map[string]string) []string {
	names := make([]string, 0, len(secrets))
	for k := range secrets {
		names = append(names, k)
	}
	sort.Strings(names)
	out := slices.Clone(env)
	index := make(map[string]int, len(out))
	for i, kv := range out {
		name, _, _ := strings.Cut(kv, "=")
		index[name] = i
	}
	for _, k := range names {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(secrets[k], 0) {
			continue // not a variable an environment can hold
		}
		kv := k + "=" + secrets[k]
		if i, ok := index[k]; ok {
			out[i] = kv
			continue
		}
		index[k] = len(out)
		out = append(out, kv)
	}
	return out
}

// inDir resolves a relative path against dir.
func inDir(dir, path string) string {
	if path == "" || filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(dir, path)
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

func validTypes() string {
	t := drivers.Types()
	if len(t) == 0 {
		return "none registered"
	}
	return strings.Join(t, ", ")
}

// errNoPath is returned when a file argument is missing.
var errNoPath = errors.New("no file given")
