//go:build !linux

package sshtest

import "syscall"

// sysProcAttr puts sshd in a process group of its own.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
