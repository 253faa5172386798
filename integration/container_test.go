//go:build unix

package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/events"
)

// containerLab is the lab the container runs: devices whose jobs need no
// shell, since the image is FROM scratch.
const containerLab = `host: container-host
run_dir: /var/lib/flinger/runs
devices:
  - agent_name: box-1
    provision_type: fake_connector
    job_queues: [box]
    device_ip: 127.0.0.1
  - agent_name: box-2
    provision_type: fake_connector
    job_queues: [box]
    device_ip: 127.0.0.1
`

// TestContainerLab builds a FROM scratch image holding the static flinger
// binary, runs `flinger lab` in it, and drives it from the host through the
// mapped NATS port: the image needs nothing but the binary, and the lab's
// NATS is reachable from outside.
func TestContainerLab(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a container image")
	}
	if _, err := os.Stat("/var/run/docker.sock"); err != nil && os.Getenv("DOCKER_HOST") == "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("no Docker engine: %v", err)
		}
		t.Skip("no Docker engine here")
	}
	t.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, "flinger"), "./cmd/flinger")
	build.Dir, build.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v\n%s", err, out)
	}
	files := map[string]string{
		"lab.yaml":   containerLab,
		"Dockerfile": "FROM scratch\nCOPY flinger /flinger\nCOPY lab.yaml /etc/flinger/lab.yaml\nENTRYPOINT [\"/flinger\"]\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ctr, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: testcontainers.ContainerRequest{
			FromDockerfile: testcontainers.FromDockerfile{Context: dir},
			Cmd:            []string{"lab", "--listen", "0.0.0.0:4222", "--data", "/var/lib/flinger/nats", "--lab", "/etc/flinger/lab.yaml"},
			ExposedPorts:   []string{"4222/tcp"},
			WaitingFor:     wait.ForLog("lab running").WithStartupTimeout(2 * time.Minute),
		},
		Started: true,
	})
	testcontainers.CleanupContainer(t, ctr)
	if err != nil {
		t.Fatalf("start container: %v", err)
	}
	// The port is published on the host: reach it on loopback, whatever
	// address the Docker engine reports for itself.
	port, err := ctr.MappedPort(ctx, "4222/tcp")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "nats://127.0.0.1:" + port.Port()
	c, err := broker.Connect(ctx, broker.ConnOptions{URL: endpoint, Name: "container-test", Log: testLog(t)})
	if err != nil {
		t.Fatalf("connect to the lab in the container: %v", err)
	}
	defer c.Close()
	eventually(t, "both devices idle", func() bool {
		devs, _, err := c.ListDevices(ctx)
		return err == nil && len(devs) == 2 && devs[0].State == events.StateIdle && devs[1].State == events.StateIdle
	})
	ids := []string{
		submit(t, c, "job_queue: box\nprovision_data: {output_lines: 2}\n"),
		submit(t, c, "job_queue: box\nprovision_data: {fail: provision}\n"),
	}
	want := []events.Outcome{events.OutcomePass, events.OutcomeFail}
	for i, id := range ids {
		if rec := waitEnd(t, c, id); rec.Outcome != want[i] {
			t.Errorf("job %d in the container: %s, want %s", i, rec.Outcome, want[i])
		}
	}
	// A graceful stop: the lab exits 0 within its drain time.
	timeout := time.Minute
	if err := ctr.Stop(ctx, &timeout); err != nil {
		t.Fatalf("stop: %v", err)
	}
	state, err := ctr.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if state.ExitCode != 0 {
		t.Errorf("lab in the container exited %d after SIGTERM", state.ExitCode)
	}
}
