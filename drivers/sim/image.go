package sim

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
)

// imageMagic starts every simulated image.
const imageMagic = "FLINGER-SIM-IMAGE v1\n"

// ImageHeaderSize is the size of a simulated image's header block.
const ImageHeaderSize = 4096

// imageBlock is the unit the payload is made of.
const imageBlock = 4096

// Image describes a simulated OS image: what a device booted from it
// reports, and how big it is. Its bytes (Reader) start with a header
// block that names these, followed by a deterministic payload of which
// about a quarter is incompressible, so that compressed images have a
// realistic ratio.
//
// A simulated device boots from a disk only when the disk holds a
// complete image: the header must parse and the disk must hold exactly
// Size bytes. A truncated write or a corrupt image never boots, as on
// hardware.
type Image struct {
	// OSRelease is the content of /etc/os-release on the image.
	OSRelease string `json:"os_release"`
	// Model is what `snap model` reports (empty: a classic image).
	Model string `json:"model,omitempty"`
	// Kind names the image type a provisioning path may detect (ubuntu,
	// core, core20, pi-desktop, ubuntu-cpc, ce-oem-iot, tegra, iso).
	Kind string `json:"kind,omitempty"`
	// Size is the image's total size in bytes, header included (at least
	// ImageHeaderSize; rounded up to it when smaller).
	Size int64 `json:"size"`
	// Seed varies the payload between images of the same size.
	Seed uint64 `json:"seed"`
}

// UbuntuRelease returns an os-release for Ubuntu version (such as
// "24.04") with the code name codename.
func UbuntuRelease(version, codename string) string {
	return fmt.Sprintf("PRETTY_NAME=\"Ubuntu %[1]s\"\nNAME=\"Ubuntu\"\nVERSION_ID=%[1]q\nVERSION_CODENAME=%[2]s\nID=ubuntu\nID_LIKE=debian\nUBUNTU_CODENAME=%[2]s\n", version, codename)
}

func (im Image) size() int64 { return max(im.Size, ImageHeaderSize) }

// Header returns the image's header block.
func (im Image) Header() []byte {
	im.Size = im.size()
	j, err := json.Marshal(im)
	if err != nil {
		panic(err) // only strings and numbers
	}
	b := make([]byte, ImageHeaderSize)
	n := copy(b, imageMagic)
	copy(b[n:], j)
	return b
}

// Reader returns the image's bytes.
func (im Image) Reader() io.Reader {
	return &imageReader{header: im.Header(), size: im.size(), rng: rand.New(rand.NewPCG(im.Seed, 0x5EED))}
}

// Bytes returns the image's bytes; for small images.
func (im Image) Bytes() []byte {
	b, _ := io.ReadAll(im.Reader())
	return b
}

// SHA256 returns the hex SHA-256 of the image's bytes.
func (im Image) SHA256() string {
	h := sha256.New()
	_, _ = io.Copy(h, im.Reader())
	return hex.EncodeToString(h.Sum(nil))
}

// ErrNoImage reports that bytes do not start with a simulated image.
var ErrNoImage = errors.New("no bootable image")

// ParseImage reads the header of a simulated image from the first bytes
// of a disk.
func ParseImage(b []byte) (Image, error) {
	if len(b) < ImageHeaderSize || !bytes.HasPrefix(b, []byte(imageMagic)) {
		return Image{}, fmt.Errorf("%w: no image header", ErrNoImage)
	}
	j := bytes.TrimRight(b[len(imageMagic):ImageHeaderSize], "\x00")
	var im Image
	if err := json.Unmarshal(j, &im); err != nil {
		return Image{}, fmt.Errorf("%w: corrupt image header: %v", ErrNoImage, err)
	}
	if im.Size < ImageHeaderSize {
		return Image{}, fmt.Errorf("%w: image header gives size %d", ErrNoImage, im.Size)
	}
	return im, nil
}

// Bootable returns the image a disk's last write holds, or an error
// wrapping ErrNoImage when it holds none that boots: nothing written, a
// write that failed or is still going on, not an image, or an image
// truncated or overrun.
func Bootable(w DiskWrite) (Image, error) {
	if w.Bytes == 0 {
		return Image{}, fmt.Errorf("%w: the disk is empty", ErrNoImage)
	}
	if !w.Complete {
		msg := "the last write did not complete"
		if w.Err != nil {
			msg += ": " + w.Err.Error()
		}
		return Image{}, fmt.Errorf("%w: %s", ErrNoImage, msg)
	}
	im, err := ParseImage(w.Header)
	if err != nil {
		return Image{}, err
	}
	if w.Bytes != im.Size {
		return Image{}, fmt.Errorf("%w: the disk holds %d bytes of an image of %d", ErrNoImage, w.Bytes, im.Size)
	}
	return im, nil
}

// imageReader produces an image's bytes.
type imageReader struct {
	header []byte
	size   int64
	off    int64
	rng    *rand.Rand
	block  [imageBlock]byte
	bn     int // bytes of block still to be read, from its end
}

var filler = []byte(strings.Repeat("flinger simulated image payload 0123456789abcdef\n", imageBlock/48+1))

func (r *imageReader) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	if r.off < ImageHeaderSize {
		n := copy(p, r.header[r.off:])
		r.off += int64(n)
		return n, nil
	}
	total := 0
	for len(p) > 0 && r.off < r.size {
		if r.bn == 0 {
			r.fill()
		}
		n := copy(p, r.block[imageBlock-r.bn:])
		n = int(min(int64(n), r.size-r.off))
		p = p[n:]
		r.bn -= n
		r.off += int64(n)
		total += n
	}
	return total, nil
}

// fill makes the next payload block: random one time in four, text
// otherwise.
func (r *imageReader) fill() {
	r.bn = imageBlock
	if r.rng.IntN(4) == 0 {
		for i := 0; i < imageBlock; i += 8 {
			binary.LittleEndian.PutUint64(r.block[i:], r.rng.Uint64())
		}
		return
	}
	copy(r.block[:], filler[r.rng.IntN(48):])
}
