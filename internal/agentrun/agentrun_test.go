package agentrun

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/cylo-dev/cylo"
)

func TestSpecFromRequest(t *testing.T) {
	req, err := (&cylo.Request{
		Language: cylo.Python,
		Code:     "print(1)",
		Env:      map[string]string{"B": "2", "A": "x y\n"},
		Files:    map[string][]byte{"data/in.txt": []byte("in")},
		Timeout:  5 * time.Second,
	}).WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := Spec(req)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(spec.Argv, []string{"python3", "main.py"}) {
		t.Errorf("argv %v", spec.Argv)
	}
	if spec.Files[0].Path != "main.py" || string(spec.Files[0].Data) != "print(1)" {
		t.Errorf("first file %+v, want main.py with the code unchanged", spec.Files[0])
	}
	if spec.Files[1].Path != "data/in.txt" {
		t.Errorf("second file %q, want data/in.txt", spec.Files[1].Path)
	}
	n := len(spec.Env)
	if spec.Env[n-2] != "A=x y\n" || spec.Env[n-1] != "B=2" {
		t.Errorf("env ends %q, want the request's variables sorted and exact", spec.Env[n-2:])
	}
	if spec.TimeoutMillis != 5000 || spec.MemoryBytes != cylo.DefaultMemoryBytes || spec.Dir != "/work" {
		t.Errorf("spec limits %+v", spec)
	}
}

func TestCappedBufferDropsPastCap(t *testing.T) {
	b := &cappedBuffer{max: 5}
	b.Write([]byte("abc"))
	n, err := b.Write([]byte("defgh"))
	if n != 5 || err != nil {
		t.Errorf("Write = %d, %v; want the whole chunk accepted", n, err)
	}
	if !bytes.Equal(b.buf, []byte("abcde")) || !b.dropped {
		t.Errorf("buffer %q dropped %v, want abcde and true", b.buf, b.dropped)
	}
}
