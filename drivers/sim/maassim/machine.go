package maassim

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers/sim"
)

// The status names of MAAS machines, and their numbers (MAAS's NODE_STATUS).
const (
	StatusNew              = "New"
	StatusReady            = "Ready"
	StatusAllocated        = "Allocated"
	StatusDeploying        = "Deploying"
	StatusDeployed         = "Deployed"
	StatusFailedDeployment = "Failed deployment"
	StatusReleasing        = "Releasing"
	StatusBroken           = "Broken"
)

var statusNumbers = map[string]int{
	StatusNew: 0, StatusReady: 4, StatusDeployed: 6, StatusBroken: 8, StatusDeploying: 9,
	StatusAllocated: 10, StatusFailedDeployment: 11, StatusReleasing: 12,
}

// releasable are the statuses a release starts from (MAAS's
// RELEASABLE_STATUSES, as far as the simulator has them).
var releasable = []string{StatusAllocated, StatusDeployed, StatusDeploying, StatusFailedDeployment}

// UserDataPath is where a deployed machine keeps the user data it was
// deployed with, as cloud-init does.
const UserDataPath = "/var/lib/cloud/instance/user-data.txt"

// TPMRequestPath is the TPM's physical presence request file.
const TPMRequestPath = "/sys/class/tpm/tpm0/ppi/request"

// OtherAddress is the address a machine with the NoAddress fault gets.
const OtherAddress = "10.245.136.7"

// Defaults of MachineOptions.
const (
	DefaultDeployTime  = 300 * time.Millisecond
	DefaultReleaseTime = 100 * time.Millisecond
	DefaultBootTime    = 200 * time.Millisecond
	DefaultDeviceIP    = "127.0.0.1"
)

// MachineFaults are the misbehaviours of one machine.
type MachineFaults struct {
	// DeployFails makes every deployment end in Failed deployment, with a
	// curtin error in the installation output.
	DeployFails bool
	// ReleaseHangs keeps a released machine Releasing until it is powered
	// off with power_off (as when the system ignores the soft power-off).
	// mark_broken then mark_fixed also get it out.
	ReleaseHangs bool
	// MarkBrokenRefused makes mark_broken answer 409.
	MarkBrokenRefused bool
	// BMCUnresponsive makes the machine's BMC ignore power requests:
	// power_off is accepted and does nothing, a release waits forever for
	// the machine to go down, a deployment cannot power it on and fails.
	BMCUnresponsive bool
	// NoAddress gives the deployed machine OtherAddress instead of its
	// device address.
	NoAddress bool
	// NeverBoots keeps the deployed system from ever answering SSH, while
	// MAAS reports the machine Deployed.
	NeverBoots bool
	// WrongDistro makes the machine boot another release than the one
	// deployed (noble for jammy, jammy otherwise).
	WrongDistro bool
	// HostKeyChanges gives the deployed system a new SSH host key on every
	// boot (a deployment always gives it a new one).
	HostKeyChanges bool
	// EFIDiskFirst makes the firmware put the installed system's boot
	// entry first after each deployment; a deployment then fails (the
	// machine boots its disk, not the network) until the IPv4 network
	// entry is first again (efibootmgr -o).
	EFIDiskFirst bool
}

// Disk is a physical disk of a machine.
type Disk struct {
	// Name is the kernel's name, such as sda.
	Name string
	// Size is its size in bytes.
	Size int64
	// Model and Serial describe it.
	Model, Serial string
}

// DefaultDisks are a machine's disks when MachineOptions.Disks is empty.
var DefaultDisks = []Disk{
	{Name: "sda", Size: 500_107_862_016, Model: "SAMSUNG MZ7LH480", Serial: "S45PNA0M500001"},
	{Name: "sdb", Size: 250_059_350_016, Model: "ST250DM000", Serial: "Z9A0250001"},
}

// MachineOptions configure a machine.
type MachineOptions struct {
	// SystemID is MAAS's id of the machine (default: a random one).
	SystemID string
	// Hostname is its host name (default "maas-" + SystemID).
	Hostname string
	// Status is its status at start: Ready (the default), New, Broken,
	// Allocated or Deployed.
	Status string
	// Distro is the release running when Status is Deployed (default jammy).
	Distro string
	// DeviceIP is the loopback address its system answers SSH on (default
	// 127.0.0.1); the port is chosen at start and kept.
	DeviceIP string
	// Disks are its physical disks (default DefaultDisks).
	Disks []Disk
	// DeployTime, ReleaseTime and BootTime are how long a deployment, a
	// release and the deployed system's boot take (defaults
	// DefaultDeployTime, DefaultReleaseTime, DefaultBootTime).
	DeployTime, ReleaseTime, BootTime time.Duration
	// Users are the deployed system's logins (default ubuntu/ubuntu).
	Users map[string]string
	// AuthorizedKeys are public keys the deployed system accepts.
	AuthorizedKeys []ssh.PublicKey
	// NoTPM gives the machine no TPM.
	NoTPM bool
	// BootOrder is the UEFI boot order at start (default 0001,0000,0002,0003:
	// IPv4 network boot first; 0000 is the installed system, 0002 IPv6
	// network boot, 0003 the firmware's shell).
	BootOrder []string
	// Faults are the machine's faults at start.
	Faults MachineFaults
}

// Deployment is what a machine was deployed with.
type Deployment struct {
	// Distro is the release deployed (the codename).
	Distro string
	// Kernel is hwe_kernel as given.
	Kernel string
	// UserData is the decoded user data.
	UserData []byte
	// Ephemeral reports an ephemeral (in memory) deployment.
	Ephemeral bool
}

// Machine is a simulated MAAS machine. Its fields are guarded by the
// Server's mutex.
type Machine struct {
	s           *Server
	systemID    string
	hostname    string
	deviceIP    string
	dut         *sim.DUT
	deployTime  time.Duration
	releaseTime time.Duration

	status, message string
	power           string
	owner           string
	deployment      Deployment
	deployments     []Deployment
	ips             []string
	disks           []*blockDevice
	bootDisk        int
	efiOrder        []string
	efiCurrent      string
	tpm             bool
	tpmClears       int
	results         []*resultSet
	faults          MachineFaults
	timer           *time.Timer
	gen             uint64
	bootCancel      context.CancelFunc
	history         []string
}

// resultSet is one deployment's installation results.
type resultSet struct {
	id             int
	status         string // Running, Passed, Failed
	started, ended time.Time
	log            string
}

// distros are the releases the simulated MAAS has images of.
var distros = []struct{ codename, version string }{
	{"focal", "20.04"}, {"jammy", "22.04"}, {"noble", "24.04"},
}

// distroFor reads a distro_series as MAAS takes it (jammy, ubuntu/jammy,
// 22.04, ubuntu/22.04) and returns the codename and version.
func distroFor(series string) (codename, version string, ok bool) {
	s := strings.TrimPrefix(series, "ubuntu/")
	for _, d := range distros {
		if s == d.codename || s == d.version {
			return d.codename, d.version, true
		}
	}
	return "", "", false
}

var kernelName = regexp.MustCompile(`^(ga|hwe)-(\d\d\.\d\d)(-edge|-lowlatency)?$`)

// AddMachine adds a machine and starts its system (a sim.DUT, Off unless
// the machine starts Deployed).
func (s *Server) AddMachine(ctx context.Context, o MachineOptions) (*Machine, error) {
	if o.SystemID == "" {
		o.SystemID = randomHex(6)
	}
	if o.Hostname == "" {
		o.Hostname = "maas-" + o.SystemID
	}
	if o.Status == "" {
		o.Status = StatusReady
	}
	if !slices.Contains([]string{StatusReady, StatusNew, StatusBroken, StatusAllocated, StatusDeployed}, o.Status) {
		return nil, fmt.Errorf("maassim: a machine cannot start %q", o.Status)
	}
	if o.Distro == "" {
		o.Distro = "jammy"
	}
	codename, version, ok := distroFor(o.Distro)
	if !ok {
		return nil, fmt.Errorf("maassim: no image of %q", o.Distro)
	}
	if o.DeviceIP == "" {
		o.DeviceIP = DefaultDeviceIP
	}
	if len(o.Disks) == 0 {
		o.Disks = DefaultDisks
	}
	if o.DeployTime <= 0 {
		o.DeployTime = DefaultDeployTime
	}
	if o.ReleaseTime <= 0 {
		o.ReleaseTime = DefaultReleaseTime
	}
	if o.BootTime <= 0 {
		o.BootTime = DefaultBootTime
	}
	if len(o.BootOrder) == 0 {
		o.BootOrder = []string{"0001", "0000", "0002", "0003"}
	}
	for _, e := range o.BootOrder {
		if _, ok := efiEntries[e]; !ok {
			return nil, fmt.Errorf("maassim: boot order: no boot entry %q", e)
		}
	}
	if len(o.Users) == 0 && len(o.AuthorizedKeys) == 0 {
		o.Users = map[string]string{"ubuntu": "ubuntu"}
	}
	dut, err := sim.StartDUT(ctx, sim.DUTOptions{
		Name: o.Hostname, Addr: net.JoinHostPort(o.DeviceIP, "0"), BootTime: o.BootTime,
		Users: o.Users, AuthorizedKeys: o.AuthorizedKeys, OSRelease: sim.UbuntuRelease(version, codename),
		Log: s.log,
	})
	if err != nil {
		return nil, fmt.Errorf("maassim: machine %s: %w", o.SystemID, err)
	}
	m := &Machine{
		s: s, systemID: o.SystemID, hostname: o.Hostname, deviceIP: o.DeviceIP, dut: dut,
		deployTime: o.DeployTime, releaseTime: o.ReleaseTime,
		status: o.Status, power: "off", tpm: !o.NoTPM, faults: o.Faults,
		efiOrder: slices.Clone(o.BootOrder), efiCurrent: o.BootOrder[0],
	}
	dut.Handle("efibootmgr", m.efibootmgr)
	dut.Handle("tee", sim.Tee{Check: sysFile}.Run)
	if m.tpm {
		dut.WriteFile(TPMRequestPath, []byte("0\n"))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		dut.Close()
		return nil, fmt.Errorf("maassim: server closed")
	}
	if _, dup := s.machines[o.SystemID]; dup {
		dut.Close()
		return nil, fmt.Errorf("maassim: machine %s added twice", o.SystemID)
	}
	for _, d := range o.Disks {
		bd := &blockDevice{id: s.idLocked(), name: d.Name, size: d.Size, model: d.Model, serial: d.Serial}
		m.disks = append(m.disks, bd)
	}
	m.bootDisk = m.disks[0].id
	m.flatLocked()
	switch o.Status {
	case StatusDeployed:
		m.owner = s.user
		m.deployment = Deployment{Distro: codename}
		m.power = "on"
		m.ips = []string{m.deviceIP}
	case StatusAllocated:
		m.owner = s.user
	}
	if o.Status != StatusDeployed {
		dut.PowerOff()
	}
	m.history = []string{o.Status}
	s.machines[o.SystemID] = m
	s.order = append(s.order, o.SystemID)
	return m, nil
}

// SystemID returns the machine's system id.
func (m *Machine) SystemID() string { return m.systemID }

// DUT returns the machine's system.
func (m *Machine) DUT() *sim.DUT { return m.dut }

// SSHPort returns the port its system answers SSH on.
func (m *Machine) SSHPort() int {
	_, port := sim.SplitAddr(m.dut.Addr())
	return port
}

// DeviceIP returns the address its system answers SSH on.
func (m *Machine) DeviceIP() string { return m.deviceIP }

// Status returns its status name.
func (m *Machine) Status() string {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	return m.status
}

// Owner returns the user the machine is allocated to ("" when none).
func (m *Machine) Owner() string {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	return m.owner
}

// PowerState returns "on" or "off".
func (m *Machine) PowerState() string {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	return m.power
}

// History returns the statuses the machine went through, in order.
func (m *Machine) History() []string {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	return slices.Clone(m.history)
}

// Deployments returns what each deployment asked for, in order.
func (m *Machine) Deployments() []Deployment {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	return slices.Clone(m.deployments)
}

// TPMClears returns how many times the TPM was cleared.
func (m *Machine) TPMClears() int {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	return m.tpmClears
}

// BootOrder returns the UEFI boot order.
func (m *Machine) BootOrder() []string {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	return slices.Clone(m.efiOrder)
}

// SetFaults replaces the machine's faults; they apply to what it does next.
func (m *Machine) SetFaults(f MachineFaults) {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	m.faults = f
}

// Faults returns the machine's faults.
func (m *Machine) Faults() MachineFaults {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	return m.faults
}

// WaitStatus waits until the machine's status is status or ctx is done.
func (m *Machine) WaitStatus(ctx context.Context, status string) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if m.Status() == status {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("machine %s is %s, not %s: %w", m.systemID, m.Status(), status, ctx.Err())
		case <-t.C:
		}
	}
}

// setStatusLocked changes the status and message.
func (m *Machine) setStatusLocked(status, message string) {
	if m.status != status {
		m.history = append(m.history, status)
		m.s.log.Info("maassim: machine status", "machine", m.systemID, "from", m.status, "to", status)
	}
	m.status, m.message = status, message
}

// stopTimersLocked cancels the pending transition and boot watcher.
func (m *Machine) stopTimersLocked() {
	m.gen++
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
	}
	if m.bootCancel != nil {
		m.bootCancel()
		m.bootCancel = nil
	}
}

// afterLocked runs fn (with the server's mutex held) after d, unless the
// machine changes course first.
func (m *Machine) afterLocked(d time.Duration, fn func()) {
	m.stopTimersLocked()
	gen := m.gen
	m.timer = time.AfterFunc(d, func() {
		m.s.mu.Lock()
		defer m.s.mu.Unlock()
		if m.gen != gen || m.s.closed {
			return
		}
		m.timer = nil
		fn()
	})
}

// powerOffLocked powers the machine off through its BMC; it reports
// whether the BMC did it.
func (m *Machine) powerOffLocked() bool {
	if m.faults.BMCUnresponsive {
		m.s.log.Info("maassim: the BMC ignores the power off (fault)", "machine", m.systemID)
		return false
	}
	m.power = "off"
	m.dut.PowerOff()
	return true
}

// releaseLocked starts a release; it completes after ReleaseTime unless
// the release hangs.
func (m *Machine) releaseLocked() {
	m.stopTimersLocked()
	m.setStatusLocked(StatusReleasing, "Releasing")
	if m.faults.ReleaseHangs {
		m.s.log.Info("maassim: the release hangs (fault)", "machine", m.systemID)
		return
	}
	if !m.powerOffLocked() {
		return // the release waits for a power off that never comes
	}
	m.afterLocked(m.releaseTime, m.releasedLocked)
}

// releasedLocked completes a release.
func (m *Machine) releasedLocked() {
	m.setStatusLocked(StatusReady, "")
	m.clearDeploymentLocked()
}

// clearDeploymentLocked forgets the machine's owner and deployment.
func (m *Machine) clearDeploymentLocked() {
	m.owner = ""
	m.deployment = Deployment{}
	m.ips = nil
	m.dut.RemoveFile(UserDataPath)
}

// The machine operations.

func (s *Server) machineLocked(r *http.Request) (*Machine, error) {
	m := s.machines[r.PathValue("id")]
	if m == nil {
		return nil, &apiError{http.StatusNotFound, "No Machine matches the given query."}
	}
	return m, nil
}

func (s *Server) listMachines(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []any{}
	for _, id := range s.order {
		out = append(out, s.machines[id].jsonLocked())
	}
	return out, nil
}

func (s *Server) readMachine(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.machineLocked(r)
	if err != nil {
		return nil, err
	}
	return m.jsonLocked(), nil
}

func (s *Server) allocate(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := r.FormValue("system_id")
	m := s.machines[id]
	if id == "" || m == nil || m.status != StatusReady {
		return nil, conflict("No available machine matches constraints: [('system_id', ['%s'])] (resolved to \"system_id=%s\")", id, id)
	}
	m.owner = s.user
	m.setStatusLocked(StatusAllocated, "")
	return m.jsonLocked(), nil
}

func (s *Server) release(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.machineLocked(r)
	if err != nil {
		return nil, err
	}
	switch {
	case m.status == StatusReady || m.status == StatusReleasing:
		// Nothing to do, as in MAAS.
	case slices.Contains(releasable, m.status):
		m.releaseLocked()
	default:
		return nil, conflict("Machine cannot be released in its current state ('%s').", m.status)
	}
	return m.jsonLocked(), nil
}

func (s *Server) markBroken(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.machineLocked(r)
	if err != nil {
		return nil, err
	}
	if m.faults.MarkBrokenRefused {
		return nil, conflict("Machine cannot be marked broken in its current state ('%s').", m.status)
	}
	if m.status != StatusBroken {
		m.stopTimersLocked()
		if m.status != StatusReady && m.status != StatusNew {
			m.powerOffLocked()
			m.clearDeploymentLocked()
		}
		m.setStatusLocked(StatusBroken, r.FormValue("comment"))
	}
	return m.jsonLocked(), nil
}

func (s *Server) markFixed(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.machineLocked(r)
	if err != nil {
		return nil, err
	}
	if !s.admin {
		return nil, forbidden("You do not have permission to mark this machine fixed.")
	}
	if m.status != StatusBroken {
		return nil, conflict("Can't mark a non-broken machine as 'Ready'.")
	}
	m.setStatusLocked(StatusReady, "")
	return m.jsonLocked(), nil
}

func (s *Server) powerOff(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.machineLocked(r)
	if err != nil {
		return nil, err
	}
	if m.powerOffLocked() && m.status == StatusReleasing && m.timer == nil {
		// The release waited for the machine to go down.
		m.afterLocked(m.releaseTime, m.releasedLocked)
	}
	return m.jsonLocked(), nil
}

func (s *Server) powerOn(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.machineLocked(r)
	if err != nil {
		return nil, err
	}
	if !m.faults.BMCUnresponsive {
		m.power = "on"
		if m.status == StatusDeployed {
			m.dut.PowerOn()
		}
	}
	return m.jsonLocked(), nil
}

// parseBool reads a boolean parameter as MAAS's StringBool does.
func parseBool(field, v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "", "false", "0", "no", "off":
		return false, nil
	case "true", "1", "yes", "on":
		return true, nil
	}
	return false, invalid(field, "'%s' is not a valid boolean.", v)
}

// versionAtLeast reports whether the server's version is major.minor or later.
func (s *Server) versionAtLeast(major, minor int) bool {
	parts := strings.SplitN(s.version, ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, _ := strconv.Atoi(parts[0])
	mi, _ := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	return ma > major || (ma == major && mi >= minor)
}

func (s *Server) deploy(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.machineLocked(r)
	if err != nil {
		return nil, err
	}
	if m.status == StatusReady {
		m.owner = s.user
		m.setStatusLocked(StatusAllocated, "")
	}
	if m.status != StatusAllocated {
		return nil, conflict("Can't deploy a machine that is in the '%s' state", m.status)
	}
	series := r.FormValue("distro_series")
	if series == "" {
		series = "jammy"
	}
	codename, version, ok := distroFor(series)
	if !ok {
		var choices []string
		for _, d := range distros {
			choices = append(choices, "'ubuntu/"+d.codename+"'")
		}
		return nil, invalid("distro_series", "'%s' is not a valid distro_series.  It should be one of: '', %s.", series, strings.Join(choices, ", "))
	}
	kernel := r.FormValue("hwe_kernel")
	if kernel != "" {
		km := kernelName.FindStringSubmatch(kernel)
		if km == nil || km[2] > version {
			return nil, invalid("hwe_kernel", "%s is not available for ubuntu/%s on amd64/generic.", kernel, codename)
		}
	}
	var userData []byte
	if ud := r.FormValue("user_data"); ud != "" {
		if userData, err = base64.StdEncoding.DecodeString(ud); err != nil {
			return nil, invalid("user_data", "Invalid base64: %v", err)
		}
	}
	ephemeral := false
	if s.versionAtLeast(3, 5) {
		if ephemeral, err = parseBool("ephemeral_deploy", r.FormValue("ephemeral_deploy")); err != nil {
			return nil, err
		}
	}
	if !ephemeral && !m.hasRootLocked() {
		return nil, badRequest("Mount the root '/' filesystem to be able to deploy this node.")
	}
	d := Deployment{Distro: codename, Kernel: kernel, UserData: userData, Ephemeral: ephemeral}
	m.deployments = append(m.deployments, d)
	m.deployment = d
	m.startDeployLocked()
	return m.jsonLocked(), nil
}

// startDeployLocked powers the machine on into the installer.
func (m *Machine) startDeployLocked() {
	m.stopTimersLocked()
	m.setStatusLocked(StatusDeploying, "Deploying")
	rs := &resultSet{id: m.s.idLocked(), status: "Running", started: time.Now()}
	m.results = append(m.results, rs)
	if m.faults.BMCUnresponsive {
		m.afterLocked(m.deployTime, func() {
			m.failDeployLocked(rs, "Failed to power on node - Power on for the node failed: the BMC did not answer.",
				"")
		})
		return
	}
	m.power = "on"
	m.dut.PowerOff()
	// The firmware carries out a pending TPM request as the machine boots.
	if b, ok := m.dut.ReadFile(TPMRequestPath); ok && m.tpm && strings.TrimSpace(string(b)) == "5" {
		m.tpmClears++
		m.dut.WriteFile(TPMRequestPath, []byte("0\n"))
		m.s.log.Info("maassim: TPM cleared", "machine", m.systemID)
	}
	pxe := len(m.efiOrder) > 0 && efiEntries[m.efiOrder[0]].ipv4
	m.afterLocked(m.deployTime, func() {
		switch {
		case !pxe:
			m.failDeployLocked(rs, "Node operation 'Deploying' timed out: the machine did not boot from the network.",
				"The machine booted from its disk (UEFI BootOrder "+strings.Join(m.efiOrder, ",")+"), not the network: no PXE request was seen.\n")
		case m.faults.DeployFails:
			m.failDeployLocked(rs, "Installation failed (refer to the installation log for more information).", curtinFailure(m))
		default:
			m.deployedLocked(rs)
		}
	})
}

// failDeployLocked ends a deployment in Failed deployment.
func (m *Machine) failDeployLocked(rs *resultSet, message, log string) {
	rs.status, rs.ended = "Failed", time.Now()
	rs.log = log
	m.setStatusLocked(StatusFailedDeployment, message)
}

// deployedLocked ends a deployment in Deployed and boots the system.
func (m *Machine) deployedLocked(rs *resultSet) {
	d := m.deployment
	booted := d.Distro
	if m.faults.WrongDistro {
		booted = "jammy"
		if d.Distro == "jammy" {
			booted = "noble"
		}
	}
	_, version, _ := distroFor(booted)
	m.dut.WriteImage(sim.UbuntuRelease(version, booted), "")
	if d.UserData != nil {
		m.dut.WriteFile(UserDataPath, d.UserData)
	} else {
		m.dut.RemoveFile(UserDataPath)
	}
	m.ips = []string{m.deviceIP}
	if m.faults.NoAddress {
		m.ips = []string{OtherAddress}
	}
	// A new installation has a new host key, kept across reboots unless
	// the fault changes it on every boot.
	m.dut.SetFaults(sim.Faults{NeverBoots: m.faults.NeverBoots, HostKeyChangesOnBoot: true})
	m.dut.PowerOn()
	if !m.faults.HostKeyChanges {
		ctx, cancel := context.WithCancel(context.Background())
		m.bootCancel = cancel
		keep := m.faults
		go func() {
			defer cancel()
			if m.dut.WaitState(ctx, sim.Up) == nil {
				m.dut.SetFaults(sim.Faults{NeverBoots: keep.NeverBoots})
			}
		}()
	}
	if m.faults.EFIDiskFirst {
		m.efiOrder = append([]string{"0000"}, slices.DeleteFunc(slices.Clone(m.efiOrder), func(e string) bool { return e == "0000" })...)
	}
	m.efiCurrent = m.efiOrder[0]
	rs.status, rs.ended = "Passed", time.Now()
	rs.log = curtinSuccess(m, booted)
	m.setStatusLocked(StatusDeployed, "Deployed")
}

// curtinSuccess is the installation output of a deployment that worked.
func curtinSuccess(m *Machine, distro string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "curtin: Installation started. (21.3-1)\n")
	fmt.Fprintf(&b, "start: cmd-install/stage-partitioning/builtin/cmd-block-meta: configuring storage\n")
	for _, d := range m.disks {
		for i, p := range d.partitions {
			fmt.Fprintf(&b, "  %s-part%d: %d bytes", d.name, i+1, p.size)
			if p.fs != nil {
				fmt.Fprintf(&b, " %s", p.fs.fstype)
				if p.fs.mountPoint != "" {
					fmt.Fprintf(&b, " on %s", p.fs.mountPoint)
				}
			}
			b.WriteString("\n")
		}
		if d.fs != nil {
			fmt.Fprintf(&b, "  %s: %s on %s\n", d.name, d.fs.fstype, d.fs.mountPoint)
		}
	}
	fmt.Fprintf(&b, "start: cmd-install/stage-extract/builtin/cmd-extract: installing ubuntu/%s\n", distro)
	fmt.Fprintf(&b, "start: cmd-install/stage-curthooks/builtin/cmd-curthooks: configuring network\n")
	for _, ip := range m.ips {
		fmt.Fprintf(&b, "  enp1s0: inet %s\n", ip)
	}
	fmt.Fprintf(&b, "curtin: Installation finished.\n")
	return b.String()
}

// curtinFailure is the installation output of a deployment that failed.
func curtinFailure(m *Machine) string {
	dev := "/dev/sda2"
	if len(m.disks) > 0 {
		dev = "/dev/" + m.disks[0].name + "2"
	}
	return "curtin: Installation started. (21.3-1)\n" +
		"start: cmd-install/stage-partitioning/builtin/cmd-block-meta: configuring storage\n" +
		"An error occured handling 'root_format': ProcessExecutionError - Unexpected error while running command.\n" +
		"Command: ['mkfs.ext4', '-F', '-q', '-L', 'root', '" + dev + "']\n" +
		"Exit code: 1\n" +
		"Stderr: mkfs.ext4: Input/output error while writing out and closing file system\n" +
		"curtin: Installation failed with exception: Unexpected error while running command.\n"
}

// jsonLocked renders the machine as MAAS does (the fields a client reads).
func (m *Machine) jsonLocked() map[string]any {
	var owner any
	if m.owner != "" {
		owner = m.owner
	}
	osystem, distro := "", ""
	if m.deployment.Distro != "" {
		osystem, distro = "ubuntu", m.deployment.Distro
	}
	var boot any
	var all, physical []any
	var storage int64
	for _, d := range m.disks {
		j := m.blockDeviceJSONLocked(d)
		all = append(all, j)
		physical = append(physical, j)
		storage += d.size
		if d.id == m.bootDisk {
			boot = j
		}
	}
	ips := m.ips
	if ips == nil {
		ips = []string{}
	}
	j := map[string]any{
		"system_id":               m.systemID,
		"hostname":                m.hostname,
		"fqdn":                    m.hostname + ".maas",
		"status":                  statusNumbers[m.status],
		"status_name":             m.status,
		"status_message":          m.message,
		"power_state":             m.power,
		"power_type":              "ipmi",
		"owner":                   owner,
		"architecture":            "amd64/generic",
		"osystem":                 osystem,
		"distro_series":           distro,
		"hwe_kernel":              m.deployment.Kernel,
		"ip_addresses":            ips,
		"boot_disk":               boot,
		"blockdevice_set":         all,
		"physicalblockdevice_set": physical,
		"storage":                 float64(storage) / 1e6,
		"cpu_count":               8,
		"memory":                  16384,
		"netboot":                 true,
		"tag_names":               []string{},
		"zone":                    map[string]any{"name": "default"},
		"pool":                    map[string]any{"name": "default"},
		"resource_uri":            APIPrefix + "machines/" + m.systemID + "/",
	}
	if m.s.versionAtLeast(3, 5) {
		j["ephemeral_deploy"] = m.deployment.Ephemeral
	}
	return j
}

// The installation results.

func (s *Server) listResults(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.machineLocked(r)
	if err != nil {
		return nil, err
	}
	switch r.URL.Query().Get("type") {
	case "", "installation", "1":
	default:
		return []any{}, nil // only installations are simulated
	}
	out := []any{}
	for _, rs := range m.results {
		out = append(out, rs.json(m))
	}
	return out, nil
}

func (rs *resultSet) json(m *Machine) map[string]any {
	ended := ""
	if !rs.ended.IsZero() {
		ended = rs.ended.UTC().Format("Mon, 02 Jan. 2006 15:04:05")
	}
	statuses := map[string]int{"Running": 1, "Passed": 2, "Failed": 3}
	var exit any
	switch rs.status {
	case "Passed":
		exit = 0
	case "Failed":
		exit = 1
	}
	return map[string]any{
		"id":          rs.id,
		"system_id":   m.systemID,
		"type":        1,
		"type_name":   "Installation",
		"status":      statuses[rs.status],
		"status_name": rs.status,
		"started":     rs.started.UTC().Format("Mon, 02 Jan. 2006 15:04:05"),
		"ended":       ended,
		"results": []any{map[string]any{
			"id": rs.id, "name": "/tmp/install.log", "status_name": rs.status, "exit_status": exit,
		}},
		"resource_uri": fmt.Sprintf("%snodes/%s/results/%d/", APIPrefix, m.systemID, rs.id),
	}
}

func (s *Server) downloadResult(r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.machineLocked(r)
	if err != nil {
		return nil, err
	}
	id, _ := strconv.Atoi(r.PathValue("rid"))
	for _, rs := range m.results {
		if rs.id == id {
			return text(rs.log), nil
		}
	}
	return nil, errNotFound
}
