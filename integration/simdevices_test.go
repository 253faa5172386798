package integration

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	_ "github.com/flingerlab/flinger/drivers/sim/all"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/lab"
	"github.com/flingerlab/flinger/workers"
)

// simCase is one job on one simulated device, run through the worker: the
// outcome the job must reach, the state the device must be left in and
// the events it must have published.
type simCase struct {
	name string
	// device is the device's entry in the host file (without agent_name and
	// job_queues), with its sim: settings.
	device string
	// job is the job's provision_data and test_data, in YAML, indented by
	// nothing; {{images}} stands for the simulated image server's URL.
	job string
	// outcome is the job's outcome.
	outcome events.Outcome
	// offline: the device must be taken offline (a recovery failure).
	offline bool
	// events must all appear in the job's events.
	events []string
}

// simCases are the cases for every simulated connector type: the happy
// path and the faults, each mapped to its outcome as the worker maps the
// driver's typed error.
var simCases = []simCase{
	{
		name:    "noprovision up",
		device:  "provision_type: noprovision\nsim: {boot_time: 100ms}",
		job:     "provision_data: {skip: false}\ntest_data: {test_cmds: echo tested}",
		outcome: events.OutcomePass,
	},
	{
		name:    "noprovision reset brings it back",
		device:  "provision_type: noprovision\nreboot_wait: 0\nboot_check_interval: 200ms\nsim: {boot_time: 300ms, down: true}",
		job:     "provision_data: {skip: false}\ntest_data: {test_cmds: echo tested}",
		outcome: events.OutcomePass,
	},
	{
		name:    "noprovision never boots",
		device:  "provision_type: noprovision\nreboot_wait: 0\nboot_timeout: 2\nboot_check_interval: 200ms\nsim: {boot_time: 100ms, down: true, fault: never_boots}",
		job:     "provision_data: {skip: false}\ntest_data: {test_cmds: echo never}",
		outcome: events.OutcomeRecoveryFail,
		offline: true,
		events:  []string{events.EventRecoveryFail},
	},
	{
		name:    "netboot xz image",
		device:  "provision_type: netboot\nsim: {boot_time: 300ms}",
		job:     "provision_data: {url: '{{images}}/ubuntu-24.04-server.img.xz'}\ntest_data: {test_cmds: echo tested}",
		outcome: events.OutcomePass,
		events:  []string{events.EventProvisionProgress},
	},
	{
		name:    "netboot zstd image recompressed",
		device:  "provision_type: netboot\nsim: {boot_time: 300ms, start: master}",
		job:     "provision_data: {url: '{{images}}/ubuntu-22.04-server.img.zst'}\ntest_data: {test_cmds: echo tested}",
		outcome: events.OutcomePass,
	},
	{
		name:    "netboot 404",
		device:  "provision_type: netboot\nsim: {boot_time: 300ms}",
		job:     "provision_data: {url: '{{images}}/ubuntu-24.04-missing.img.xz'}\ntest_data: {test_cmds: echo never}",
		outcome: events.OutcomeFail,
	},
	{
		name:    "netboot corrupt image",
		device:  "provision_type: netboot\nsim: {boot_time: 300ms}",
		job:     "provision_data: {url: '{{images}}/corrupt.img.zst'}\ntest_data: {test_cmds: echo never}",
		outcome: events.OutcomeFail,
	},
	{
		name:    "netboot master never comes up",
		device:  "provision_type: netboot\nmaster_boot_timeout: 2s\nsim: {boot_time: 300ms, imager_never_boots: true}",
		job:     "provision_data: {url: '{{images}}/ubuntu-24.04-server.img.xz'}\ntest_data: {test_cmds: echo never}",
		outcome: events.OutcomeRecoveryFail,
		offline: true,
	},
	{
		name:    "netboot write fails half way",
		device:  "provision_type: netboot\nsim: {boot_time: 300ms, write_fails_after: 1048576}",
		job:     "provision_data: {url: '{{images}}/ubuntu-24.04-server.img.xz'}\ntest_data: {test_cmds: echo never}",
		outcome: events.OutcomeFail,
	},
	{
		name:    "muxpi zstd image",
		device:  "provision_type: muxpi\nsim: {}",
		job:     "provision_data: {url: '{{images}}/ubuntu-24.04-core.img.zst'}\ntest_data: {test_cmds: echo tested}",
		outcome: events.OutcomePass,
		events:  []string{events.EventProvisionProgress},
	},
	{
		name:    "muxpi sdwire usb",
		device:  "provision_type: muxpi\ncontrol_switch_local_cmd: zapper sdwire\nsim: {mux_cli: zapper}",
		job:     "provision_data: {url: '{{images}}/ubuntu-22.04-pi-desktop.img.xz', media: usb}\ntest_data: {test_cmds: echo tested}",
		outcome: events.OutcomePass,
	},
	{
		name:    "muxpi write fails half way",
		device:  "provision_type: muxpi\nsim: {write_fails_after: 1048576}",
		job:     "provision_data: {url: '{{images}}/ubuntu-24.04-server.img.gz'}\ntest_data: {test_cmds: echo never}",
		outcome: events.OutcomeFail,
	},
	{
		name:    "muxpi control host unreachable",
		device:  "provision_type: muxpi\nsim: {control_unreachable: true}",
		job:     "provision_data: {url: '{{images}}/ubuntu-24.04-server.img.zst'}\ntest_data: {test_cmds: echo never}",
		outcome: events.OutcomeRecoveryFail,
		offline: true,
	},
	{
		name:    "cm3",
		device:  "provision_type: cm3\nsim: {}",
		job:     "provision_data: {url: '{{images}}/ubuntu-22.04-server.img.xz'}\ntest_data: {test_cmds: echo tested}",
		outcome: events.OutcomePass,
		events:  []string{events.EventProvisionProgress},
	},
	{
		name:    "cm3 eMMC never appears",
		device:  "provision_type: cm3\nusb_timeout: 2s\nsim: {usb_never_appears: true}",
		job:     "provision_data: {url: '{{images}}/ubuntu-22.04-server.img.xz'}\ntest_data: {test_cmds: echo never}",
		outcome: events.OutcomeRecoveryFail,
		offline: true,
	},
	{
		name:    "dragonboard",
		device:  "provision_type: dragonboard\nsim: {}",
		job:     "provision_data: {url: '{{images}}/ubuntu-24.04-core.img.zst'}\ntest_data: {test_cmds: echo tested}",
		outcome: events.OutcomePass,
	},
	{
		name:    "dragonboard never boots the image",
		device:  "provision_type: dragonboard\nboot_timeout: 3s\nsim: {never_boots: true}",
		job:     "provision_data: {url: '{{images}}/ubuntu-24.04-core.img.zst'}\ntest_data: {test_cmds: echo never}",
		outcome: events.OutcomeFail,
	},
	{
		name:    "maas2 custom layout",
		device:  "provision_type: maas2\nsim: {deploy_time: 500ms, boot_time: 300ms}",
		job:     "provision_data:\n  distro: noble\n  disks:\n    - {id: d0, type: disk, ptable: gpt}\n    - {id: p1, type: partition, device: d0, number: 1, size: 100G}\n    - {id: f1, type: format, volume: p1, fstype: ext4}\n    - {id: m1, type: mount, device: f1, path: /}\ntest_data: {test_cmds: echo tested}",
		outcome: events.OutcomePass,
	},
	{
		name:    "maas2 deployment fails",
		device:  "provision_type: maas2\nsim: {deploy_time: 500ms, deploy_fails: true}",
		job:     "provision_data: {distro: jammy}\ntest_data: {test_cmds: echo never}",
		outcome: events.OutcomeFail,
	},
	{
		name:    "maas2 release hangs and nothing brings the node back",
		device:  "provision_type: maas2\nrelease_timeout: 3s\nfallback_timeout: 2s\nsim: {status: Deployed, release_hangs: true, bmc_unresponsive: true, mark_broken_refused: true}",
		job:     "provision_data: {distro: jammy}\ntest_data: {test_cmds: echo never}",
		outcome: events.OutcomeRecoveryFail,
		offline: true,
	},
	{
		name:    "oemrecovery",
		device:  "provision_type: oemrecovery\nsim: {}",
		job:     "provision_data: {skip: false}\ntest_data: {test_cmds: echo tested}",
		outcome: events.OutcomePass,
	},
	{
		name:    "oemrecovery never finishes",
		device:  "provision_type: oemrecovery\nrecovery_timeout: 3s\nsim: {recovery_never_finishes: true}",
		job:     "provision_data: {skip: false}\ntest_data: {test_cmds: echo never}",
		outcome: events.OutcomeRecoveryFail,
		offline: true,
	},
	{
		name:    "dell_oemscript",
		device:  "provision_type: dell_oemscript\nsim: {}",
		job:     "provision_data: {url: '{{images}}/ubuntu-24.04-iso.iso'}\ntest_data: {test_cmds: echo tested}",
		outcome: events.OutcomePass,
		events:  []string{events.EventProvisionProgress},
	},
	{
		name:    "hp_oemscript",
		device:  "provision_type: hp_oemscript\nsim: {}",
		job:     "provision_data: {url: '{{images}}/ubuntu-24.04-iso.iso.xz'}\ntest_data: {test_cmds: echo tested}",
		outcome: events.OutcomePass,
	},
	{
		name:    "lenovo_oemscript 404",
		device:  "provision_type: lenovo_oemscript\nsim: {}",
		job:     "provision_data: {url: '{{images}}/ubuntu-24.04-nothing.iso'}\ntest_data: {test_cmds: echo never}",
		outcome: events.OutcomeFail,
	},
	{
		name:    "oemscript",
		device:  "provision_type: oemscript\nsim: {}",
		job:     "provision_data: {url: '{{images}}/ubuntu-22.04-iso.iso.zst'}\ntest_data: {test_cmds: echo tested}",
		outcome: events.OutcomePass,
	},
}

// simWait bounds each simulated job: they all run at once, some write and
// recompress images, and a machine running the race detector is slow.
const simWait = 5 * time.Minute

// TestSimulatedDevices runs every simCase through a lab's worker, each on
// its own simulated device, all at once.
func TestSimulatedDevices(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	fmt.Fprintf(&b, "host: sim-host\nrun_dir: %s\ndevices:\n", t.TempDir())
	for i, c := range simCases {
		fmt.Fprintf(&b, "  - agent_name: sim-%02d\n    job_queues: [simq-%02d]\n", i, i)
		for _, line := range strings.Split(c.device, "\n") {
			fmt.Fprintf(&b, "    %s\n", line)
		}
	}
	host, err := drivers.ParseHost([]byte(b.String()), "sim-host.yaml")
	if err != nil {
		t.Fatalf("host file: %v\n%s", err, b.String())
	}
	l := startSimLab(t, host)
	c := connect(t, l, "sim-test")
	var wg sync.WaitGroup
	for i, sc := range simCases {
		wg.Go(func() {
			job := fmt.Sprintf("job_queue: simq-%02d\nname: %q\n%s\n", i, sc.name, strings.ReplaceAll(sc.job, "{{images}}", imagesURL(l)))
			id := submit(t, c, job)
			rec := waitEndWithin(t, c, id, simWait)
			if rec.Outcome != sc.outcome {
				t.Errorf("%s: outcome %s, want %s\noutput:\n%s", sc.name, rec.Outcome, sc.outcome, tail(output(t, c, id), 3000))
			}
			got := names(jobEvents(t, c, id))
			for _, want := range sc.events {
				if !contains(got, want) {
					t.Errorf("%s: no %s event among %v", sc.name, want, got)
				}
			}
			dev := fmt.Sprintf("sim-%02d", i)
			eventually(t, dev+" state", func() bool {
				st, err := c.GetDevice(t.Context(), dev)
				if err != nil || st == nil {
					return false
				}
				if sc.offline {
					return st.State == events.StateOffline && st.Health == events.HealthBad
				}
				return st.State == events.StateIdle
			})
		})
	}
	wg.Wait()
}

// startSimLab starts a lab whose worker drives host's simulated devices,
// with a server of simulated images.
func startSimLab(t *testing.T, host *drivers.HostConfig) *lab.Lab {
	t.Helper()
	o := labOptions(t, host, workers.Config{RunDir: t.TempDir()}, "127.0.0.1:0")
	o.SimImageSize = 4 << 20 // small: the race detector slows every byte down
	l, err := lab.Start(t.Context(), o)
	if err != nil {
		t.Fatalf("start lab: %v", err)
	}
	t.Cleanup(l.Stop)
	return l
}

func imagesURL(l *lab.Lab) string {
	if l.Images == nil {
		return "http://127.0.0.1:1/no-image-server"
	}
	return l.Images.URL()
}

func contains(s []string, v string) bool {
	for _, e := range s {
		if e == v {
			return true
		}
	}
	return false
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
