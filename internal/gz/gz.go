// Package gz is the one gzip encoding of what the tool stores in
// ConfigMaps (the state's shards, the published plan's shards): the best
// compression, since a ConfigMap holds at most 1 MiB and what is stored is
// written once and read often, and a bounded decompression, since what is
// read back may have been written by anyone with access to the namespace.
package gz

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
)

// Compress gzips b at the best compression.
func Compress(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	w, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Decompress gunzips b, refusing anything that decompresses to more than
// limit bytes (a gzip bomb in a ConfigMap must not exhaust the Job's
// memory).
func Decompress(b []byte, limit int64) ([]byte, error) {
	r, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	out, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(out)) > limit {
		return nil, fmt.Errorf("decompresses to more than %d bytes", limit)
	}
	return out, nil
}
