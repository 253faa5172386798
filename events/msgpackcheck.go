package events

import (
	"encoding/binary"
	"fmt"
)

// maxMsgpackDepth bounds how deeply maps and arrays may nest in a msgpack
// payload. The decoder recurses once per level, so without a bound a
// payload of a million one-element arrays would use a very deep stack.
const maxMsgpackDepth = 1000

// checkMsgpack walks one msgpack value without decoding it and refuses a
// value nested deeper than maxDepth, one that claims more elements or
// bytes than the payload holds, or one that does not end the payload. It
// allocates only its stack of open containers, so it is safe to run on
// untrusted input before decoding it.
func checkMsgpack(b []byte, maxDepth int) error {
	// pending[i] counts the values still to read at depth i+1.
	var pending []uint64
	remaining := uint64(1)
	pos := 0
	need := func(n uint64) error {
		if uint64(len(b)-pos) < n {
			return fmt.Errorf("truncated at byte %d", pos)
		}
		return nil
	}
	uintN := func(n int) (uint64, error) {
		if err := need(uint64(n)); err != nil {
			return 0, err
		}
		var v uint64
		switch n {
		case 1:
			v = uint64(b[pos])
		case 2:
			v = uint64(binary.BigEndian.Uint16(b[pos:]))
		case 4:
			v = uint64(binary.BigEndian.Uint32(b[pos:]))
		}
		pos += n
		return v, nil
	}
	for {
		for remaining == 0 {
			if len(pending) == 0 {
				if pos != len(b) {
					return fmt.Errorf("%d bytes after the top-level value", len(b)-pos)
				}
				return nil
			}
			remaining = pending[len(pending)-1]
			pending = pending[:len(pending)-1]
		}
		remaining--
		if err := need(1); err != nil {
			return err
		}
		c := b[pos]
		pos++
		var skip, children uint64
		var err error
		switch {
		case c <= 0x7f || c >= 0xe0: // fixint
		case c <= 0x8f: // fixmap
			children = 2 * uint64(c&0x0f)
		case c <= 0x9f: // fixarray
			children = uint64(c & 0x0f)
		case c <= 0xbf: // fixstr
			skip = uint64(c & 0x1f)
		case c == 0xc0 || c == 0xc2 || c == 0xc3: // nil, false, true
		case c == 0xc1:
			return fmt.Errorf("invalid code 0xc1 at byte %d", pos-1)
		case c >= 0xc4 && c <= 0xc6: // bin 8/16/32
			skip, err = uintN(1 << (c - 0xc4))
		case c >= 0xc7 && c <= 0xc9: // ext 8/16/32
			skip, err = uintN(1 << (c - 0xc7))
			skip++
		case c == 0xca:
			skip = 4
		case c == 0xcb:
			skip = 8
		case c >= 0xcc && c <= 0xcf: // uint 8..64
			skip = 1 << (c - 0xcc)
		case c >= 0xd0 && c <= 0xd3: // int 8..64
			skip = 1 << (c - 0xd0)
		case c >= 0xd4 && c <= 0xd8: // fixext 1..16
			skip = 1 + 1<<(c-0xd4)
		case c >= 0xd9 && c <= 0xdb: // str 8/16/32
			skip, err = uintN(1 << (c - 0xd9))
		case c == 0xdc || c == 0xdd: // array 16/32
			children, err = uintN(2 << (c - 0xdc))
		case c == 0xde || c == 0xdf: // map 16/32
			children, err = uintN(2 << (c - 0xde))
			children *= 2
		}
		if err != nil {
			return err
		}
		if err := need(skip); err != nil {
			return err
		}
		pos += int(skip)
		if children > 0 {
			// Every element takes at least one byte.
			if err := need(children); err != nil {
				return fmt.Errorf("%d elements claimed at byte %d, more than the payload holds", children, pos)
			}
			if len(pending)+1 >= maxDepth {
				return fmt.Errorf("nested more than %d levels deep", maxDepth)
			}
			pending = append(pending, remaining)
			remaining = children
		}
	}
}
