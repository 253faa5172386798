package sshx

import "errors"

// IsHostKeyError reports whether err is, or wraps, a host key the policy
// refused: one other than the key recorded or pinned for the device
// (*HostKeyChangedError), or one no pin covers (ErrUnknownHost).
// Retrying does not cure it, nor does resetting the device: an operator
// must look.
func IsHostKeyError(err error) bool {
	var changed *HostKeyChangedError
	return errors.As(err, &changed) || errors.Is(err, ErrUnknownHost)
}
