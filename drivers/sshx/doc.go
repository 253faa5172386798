// Package sshx is the SSH client device drivers use to reach devices and
// control hosts in-process, where Testflinger shells out to sshpass, ssh,
// scp, ssh-copy-id and ssh-import-id.
//
// Connections are made with [Dial] (or [WaitForSSH], which retries until a
// device has booted) and always check the server's host key with a
// [HostKeyPolicy]: [PinnedKnownHosts] for keys an operator pinned in an
// OpenSSH known_hosts file, [TOFU] for devices whose keys are recorded the
// first time they are seen (and forgotten with Reset when a device is
// re-provisioned). There is no policy that accepts any key.
//
// A [Client] runs commands with every argument quoted for the remote POSIX
// shell ([Client.Run], [Quote]), runs a job's own script with its
// environment passed as quoted assignments ([Client.RunScript]), copies
// files with SFTP, or cat when the server has no SFTP subsystem
// ([Client.Upload], [Client.Download]), and installs public keys into
// authorized_keys ([InstallAuthorizedKeys]). Every call that blocks takes
// a context: when it is done the call stops (the remote command's process
// group is sent SIGTERM, then SIGKILL) and returns an error wrapping
// ctx.Err().
//
// Errors callers branch on are typed: [*HostKeyChangedError],
// [ErrUnknownHost], [ErrAuth] and [*ExitError]. [Retry] runs a function
// with bounded exponential backoff and jitter.
//
// The remote login shell is assumed to be a POSIX shell (sh, dash, bash,
// busybox ash), as on every Ubuntu image.
package sshx
