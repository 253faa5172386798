//go:build !unix

package image

// lockDir does nothing where flock is not available: one process at a time
// must use a cache directory.
func lockDir(string) (func() error, error) { return func() error { return nil }, nil }
