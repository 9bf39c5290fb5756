package agentproto

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	payloads := [][]byte{nil, {0}, bytes.Repeat([]byte{0xff}, MaxDataChunk)}
	for _, p := range payloads {
		if err := WriteFrame(&buf, FrameStdout, p); err != nil {
			t.Fatal(err)
		}
	}
	for i, want := range payloads {
		typ, got, err := ReadFrame(&buf)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if typ != FrameStdout || !bytes.Equal(got, want) {
			t.Errorf("frame %d: type %q, %d bytes; want %q, %d bytes", i, typ, len(got), FrameStdout, len(want))
		}
	}
	if _, _, err := ReadFrame(&buf); !errors.Is(err, io.EOF) {
		t.Errorf("after the last frame: %v, want io.EOF", err)
	}
}

func TestReadFrameRejectsOversize(t *testing.T) {
	header := []byte{FrameSpec, 0xff, 0xff, 0xff, 0xff}
	if _, _, err := ReadFrame(bytes.NewReader(header)); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("err = %v, want ErrFrameTooLarge", err)
	}
}

func TestReadFrameTruncated(t *testing.T) {
	var buf bytes.Buffer
	WriteFrame(&buf, FrameStderr, []byte("hello"))
	data := buf.Bytes()[:buf.Len()-2]
	_, _, err := ReadFrame(bytes.NewReader(data))
	if err == nil || errors.Is(err, io.EOF) {
		t.Errorf("err = %v, want a truncated-payload error that is not a clean EOF", err)
	}
}
