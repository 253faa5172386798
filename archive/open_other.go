//go:build !unix

package archive

// openNoFollow is not available here; the file's type is checked once it
// is open.
const openNoFollow = 0
