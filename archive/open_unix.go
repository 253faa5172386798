//go:build unix

package archive

import "syscall"

// openNoFollow makes opening a file to pack fail on a symbolic link, and
// not block on a fifo, should one have replaced the file since it was
// listed.
const openNoFollow = syscall.O_NOFOLLOW | syscall.O_NONBLOCK
