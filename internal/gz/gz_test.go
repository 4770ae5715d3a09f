package gz

import (
	"bytes"
	"strings"
	"testing"
)

func TestRoundTripAndLimit(t *testing.T) {
	in := []byte(strings.Repeat("stage: 1\n", 10000))
	z, err := Compress(in)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		limit   int64
		wantErr bool
	}{
		{"exactly the size", int64(len(in)), false},
		{"room to spare", int64(len(in)) * 2, false},
		{"one byte short", int64(len(in)) - 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Decompress(z, tt.limit)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error: %v", err, tt.wantErr)
			}
			if err == nil && !bytes.Equal(out, in) {
				t.Fatal("round trip changed the bytes")
			}
		})
	}
	if _, err := Decompress([]byte("not gzip"), 100); err == nil {
		t.Error("garbage decompressed without an error")
	}
}
