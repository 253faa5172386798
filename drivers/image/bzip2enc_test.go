package image

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"
)

// The standard library only decompresses bzip2, so the tests carry a small
// bzip2 compressor: level 1 (100 kB blocks), the initial run-length
// encoding, the Burrows-Wheeler transform, move-to-front with RUNA/RUNB
// zero runs, and two identical near-fixed-length Huffman tables. It
// compresses worse than bzip2(1) but writes valid streams.

const bzBlockMax = 100000 - 20 // bytes of RLE1 output per block (level 1)

func bzip2Compress(tb testing.TB, data []byte) []byte {
	tb.Helper()
	w := &bitWriter{}
	w.bytes([]byte("BZh1"))
	var combined uint32
	for len(data) > 0 {
		consumed, rle := bzRLE1(data)
		crc := bzCRC(data[:consumed])
		combined = (combined<<1 | combined>>31) ^ crc
		bzBlock(w, rle, crc)
		data = data[consumed:]
	}
	w.bits(0x177245, 24)
	w.bits(0x385090, 24)
	w.bits(uint64(combined), 32)
	return w.flush()
}

// bzRLE1 run-length encodes a prefix of data (runs of 4 to 255 equal bytes
// become 4 bytes and a count) into at most bzBlockMax bytes; it returns how
// much of data it consumed.
func bzRLE1(data []byte) (int, []byte) {
	out := make([]byte, 0, bzBlockMax)
	i := 0
	for i < len(data) && len(out)+5 <= bzBlockMax {
		b := data[i]
		n := 1
		for i+n < len(data) && data[i+n] == b && n < 255 {
			n++
		}
		if n >= 4 {
			out = append(out, b, b, b, b, byte(n-4))
		} else {
			for range n {
				out = append(out, b)
			}
		}
		i += n
	}
	return i, out
}

var bzCRCTable = func() (t [256]uint32) {
	for i := range t {
		c := uint32(i) << 24
		for range 8 {
			if c&0x80000000 != 0 {
				c = c<<1 ^ 0x04C11DB7
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()

func bzCRC(p []byte) uint32 {
	c := ^uint32(0)
	for _, b := range p {
		c = c<<8 ^ bzCRCTable[byte(c>>24)^b]
	}
	return ^c
}

// bzBWT returns the last column of the sorted rotations of s and the row
// of s itself.
func bzBWT(s []byte) ([]byte, int) {
	n := len(s)
	dbl := append(append(make([]byte, 0, 2*n+8), s...), s...)
	dbl = append(dbl, s[:min(8, n)]...)
	for len(dbl) < 2*n+8 {
		dbl = append(dbl, 0)
	}
	keys := make([]uint64, n)
	idx := make([]int32, n)
	for i := range n {
		keys[i] = binary.BigEndian.Uint64(dbl[i:])
		idx[i] = int32(i)
	}
	slices.SortFunc(idx, func(a, b int32) int {
		if keys[a] != keys[b] {
			if keys[a] < keys[b] {
				return -1
			}
			return 1
		}
		return bytes.Compare(dbl[a+8:int(a)+n], dbl[b+8:int(b)+n])
	})
	last := make([]byte, n)
	orig := 0
	for row, i := range idx {
		if i == 0 {
			orig = row
		}
		last[row] = s[(int(i)+n-1)%n]
	}
	return last, orig
}

func bzBlock(w *bitWriter, block []byte, crc uint32) {
	last, orig := bzBWT(block)

	var used [256]bool
	for _, b := range block {
		used[b] = true
	}
	var seq []byte // used byte values, ascending
	for v := range 256 {
		if used[v] {
			seq = append(seq, byte(v))
		}
	}
	alpha := len(seq) + 2 // RUNA, RUNB, MTF 1..len-1, EOB
	eob := uint16(alpha - 1)

	// Move-to-front, with runs of zeros as RUNA/RUNB.
	mtf := slices.Clone(seq)
	var syms []uint16
	zeros := 0
	flush := func() {
		for r := zeros; r > 0; r >>= 1 {
			r--
			syms = append(syms, uint16(r&1))
		}
		zeros = 0
	}
	for _, b := range last {
		j := bytes.IndexByte(mtf, b)
		if j == 0 {
			zeros++
			continue
		}
		flush()
		copy(mtf[1:j+1], mtf[:j])
		mtf[0] = b
		syms = append(syms, uint16(j+1))
	}
	flush()
	syms = append(syms, eob)

	// A complete code of lengths L-1 and L for alpha symbols.
	L := 1
	for 1<<L < alpha {
		L++
	}
	short := (1 << L) - alpha
	lengths := make([]int, alpha)
	for i := range lengths {
		if i < short {
			lengths[i] = L - 1
		} else {
			lengths[i] = L
		}
	}
	codes := make([]uint32, alpha)
	code := uint32(0)
	for n := 1; n <= L; n++ {
		for i, l := range lengths {
			if l == n {
				codes[i] = code
				code++
			}
		}
		code <<= 1
	}

	w.bits(0x314159, 24)
	w.bits(0x265359, 24)
	w.bits(uint64(crc), 32)
	w.bits(0, 1) // not randomised
	w.bits(uint64(orig), 24)
	var ranges uint64
	for r := range 16 {
		for v := range 16 {
			if used[16*r+v] {
				ranges |= 1 << (15 - r)
			}
		}
	}
	w.bits(ranges, 16)
	for r := range 16 {
		if ranges&(1<<(15-r)) == 0 {
			continue
		}
		var bm uint64
		for v := range 16 {
			if used[16*r+v] {
				bm |= 1 << (15 - v)
			}
		}
		w.bits(bm, 16)
	}
	const trees = 2
	w.bits(trees, 3)
	selectors := (len(syms) + 49) / 50
	w.bits(uint64(selectors), 15)
	for range selectors {
		w.bits(0, 1) // tree 0, move-to-front coded
	}
	for range trees {
		cur := lengths[0]
		w.bits(uint64(cur), 5)
		for _, l := range lengths {
			for cur < l {
				w.bits(0b10, 2)
				cur++
			}
			for cur > l {
				w.bits(0b11, 2)
				cur--
			}
			w.bits(0, 1)
		}
	}
	for _, s := range syms {
		w.bits(uint64(codes[s]), lengths[s])
	}
}

// bitWriter writes bits most significant first.
type bitWriter struct {
	out  []byte
	acc  uint64
	nacc int
}

func (w *bitWriter) bits(v uint64, n int) {
	for n > 0 {
		take := min(n, 32)
		n -= take
		w.acc = w.acc<<take | (v>>n)&(1<<take-1)
		w.nacc += take
		for w.nacc >= 8 {
			w.nacc -= 8
			w.out = append(w.out, byte(w.acc>>w.nacc))
		}
	}
}

func (w *bitWriter) bytes(p []byte) {
	for _, b := range p {
		w.bits(uint64(b), 8)
	}
}

func (w *bitWriter) flush() []byte {
	if w.nacc > 0 {
		w.out = append(w.out, byte(w.acc<<(8-w.nacc)))
		w.acc, w.nacc = 0, 0
	}
	return w.out
}
