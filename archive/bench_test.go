package archive

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkPackUnpack packs and unpacks 64 MiB in four files of data
// that compresses about as well as a disk image: runs of zeros and text
// between random blocks.
func BenchmarkPackUnpack(b *testing.B) {
	const size = 64 << 20
	src := b.TempDir()
	r := rand.New(rand.NewChaCha8([32]byte{7}))
	chunk := make([]byte, 64<<10)
	for i := range 4 {
		f, err := os.Create(filepath.Join(src, "part"+string(rune('0'+i))+".img"))
		if err != nil {
			b.Fatal(err)
		}
		for n := 0; n < size/4; n += len(chunk) {
			switch r.IntN(3) {
			case 0:
				clear(chunk)
			case 1:
				for j := range chunk {
					chunk[j] = "flinger test data\n"[j%18]
				}
			default:
				for j := range chunk {
					chunk[j] = byte(r.Uint32())
				}
			}
			if _, err := f.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	var buf bytes.Buffer
	b.SetBytes(size)
	for b.Loop() {
		buf.Reset()
		if _, err := PackDir(ctx, &buf, src); err != nil {
			b.Fatal(err)
		}
		packed := int64(buf.Len())
		dest := filepath.Join(b.TempDir(), "dest")
		st, err := Unpack(ctx, &buf, dest, Limits{MaxBytes: size})
		if err != nil {
			b.Fatal(err)
		}
		if st.Bytes != size {
			b.Fatalf("unpacked %d bytes, want %d", st.Bytes, size)
		}
		b.ReportMetric(float64(packed)/size, "ratio")
		b.StopTimer()
		if err := os.RemoveAll(dest); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
