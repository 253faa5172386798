// Package image fetches the provisioning images that muxpi, dragonboard,
// netboot and cm3 write to their devices (provision_data.url, or an
// attachment), and turns them into the byte stream that dd writes.
//
// # Sources
//
// A [Source] is an http or https URL, a file URL or a local path (an
// attachment), with an optional sha256 of the image as served (the
// compressed file, as a SHA256SUMS next to it lists it). Any other scheme
// is refused: the package never shells out to fetch anything.
//
// # The cache
//
// A [Cache] keeps downloaded images in one directory per lab host,
// addressed by their sha256, so that ten devices provisioned with the same
// image download it once and two URLs that serve the same bytes share the
// disk space. [Cache.Open] returns an [*Image]: the complete, verified file
// exactly as the server sent it (still compressed). Concurrent Opens of one
// URL share one download; each waits with its own context, and the
// download is cancelled only when every caller waiting for it has gone. A
// downloaded URL is reused without asking the server for [DefaultMaxAge]
// (see [WithMaxAge]); after that it is revalidated with a conditional
// request on its ETag and Last-Modified, and downloaded again only when it
// changed. Images beyond the cache's size are evicted least recently used
// first, never while an Image of them is open. The directory belongs to one
// process at a time (a lock file enforces it on Unix).
//
// A stream that turns out corrupt makes the cache forget its URL, so the
// next attempt downloads it again rather than fail on the same bytes.
//
// Downloads survive dropped connections: the bytes already received are
// kept and the rest is asked for with an HTTP Range request (If-Range
// makes sure it is still the same file); a server that ignores Range is
// read again from the start. See [RetryPolicy]. A download is written to a
// temporary file in the cache directory, hashed as it is written, and
// renamed into place only when it is complete and matches the expected
// sha256; a failed or cancelled download leaves nothing behind.
//
// # Decompression
//
// The compression of an image is found from its first bytes, never from
// its name: xz, gzip, zstd and bzip2 are recognised, anything else is
// written as it is ([Detect], [Decompress], [Image.Reader]). Memory is
// bounded by the stream's own window: zstd windows up to 512 MiB are
// accepted (anything zstd --long=29 writes), and an xz stream allocates the
// dictionary its header asks for. [Image.Raw]
// gives the compressed bytes instead, for a caller that would rather ship
// them and decompress on the far side (for example into "zstdcat | dd" on
// a control host: [Format.Cat] names the command).
//
// # Streaming
//
// [Stream] writes an image to a writer (the stdin of dd, on the control
// host or the device) while it is still being downloaded: HTTP, into the
// cache file when a cache is given, through the decompressor and into the
// writer, all at once, so that dd starts writing with the first megabyte.
// The trade-off with the cache: the first device to ask for an image
// streams it from the network and fills the cache as it goes; a device
// that asks for the same image while that download runs waits for it to
// finish and then streams from the cached file, and so does every later
// one (a cache hit streams from disk, at disk speed, with no request to
// the server). Without a cache nothing is kept, and every device
// downloads. Bytes reach the writer before the whole image has been
// verified: a sha256 mismatch is reported at the end, after dd has
// written the bad image.
//
// [StreamOptions.Raw] streams the bytes as served instead, still
// compressed, with the same cache, resumption and checks, for a caller
// that decompresses on the far side ([StreamOptions.RawIf] lets it choose
// once the first bytes have shown the format). A corrupt stream is then
// found by the far side's decompressor, not here: the caller reports it
// with [CorruptError] and has the cache forget the URL with
// [Cache.Forget], so that the classification drivers see stays the one
// of [*Error]. [StreamOptions.OnComplete] says when the destination has
// the whole image and it passed its checks, before the cache has synced
// its copy to disk: a caller can end dd's input then, so that the two
// overlap.
//
// # Errors
//
// Every failure is an [*Error] whose [Kind] says what went wrong (not
// found, an HTTP error, a truncated download, a corrupt compressed stream,
// a checksum mismatch, a network failure, cancellation) and whose message
// names the image and says it in words a job's submitter understands.
// These are provisioning failures: the device is either untouched (the
// image could not be fetched) or half written and recoverable by
// provisioning it again. A driver reports them as a
// drivers.ProvisioningError, never as a drivers.RecoveryError, so a bad
// URL or a flaky mirror never takes a device out of service.
package image
