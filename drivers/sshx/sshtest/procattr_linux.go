package sshtest

import "syscall"

// sysProcAttr puts sshd in a process group of its own and has it sent
// SIGTERM if the test process dies without stopping it.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
