package nodecidrs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
)

// File is the content of the podCIDRs file, for example
// {"node":"node-1","podCIDRs":["10.244.0.0/24","fd00:10:244::/64"]}.
// Unknown keys are ignored when it is read, so that an older plugin reads a
// newer agent's file.
type File struct {
	Node     string   `json:"node"`
	PodCIDRs []string `json:"podCIDRs"`
}

// Encode returns the file's bytes; PodCIDRs is never null.
func (f File) Encode() []byte {
	if f.PodCIDRs == nil {
		f.PodCIDRs = []string{}
	}
	data, _ := json.Marshal(f) // a struct of strings always encodes
	return append(data, '\n')
}

// Parse decodes the file's content and validates every podCIDR.
func Parse(data []byte) (File, []netip.Prefix, error) {
	var f File
	if err := json.Unmarshal(data, &f); err != nil {
		return File{}, nil, fmt.Errorf("not a podCIDRs file (want {\"node\":NAME,\"podCIDRs\":[CIDR...]}): %w", err)
	}
	cidrs := make([]netip.Prefix, 0, len(f.PodCIDRs))
	for _, s := range f.PodCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return File{}, nil, fmt.Errorf("podCIDR %q is not a CIDR", s)
		}
		if p.Masked() != p {
			return File{}, nil, fmt.Errorf("podCIDR %q has host bits set", s)
		}
		cidrs = append(cidrs, p)
	}
	return f, cidrs, nil
}

// WriteIfChanged writes f to path unless the file already holds exactly
// that, and reports whether it wrote. The write is atomic: a temporary
// file in the same directory, synced, renamed over path, and the directory
// synced, so that a reader sees the old content or the new one, whole.
func WriteIfChanged(path string, f File) (bool, error) {
	data := f.Encode()
	old, err := os.ReadFile(path)
	if err == nil && bytes.Equal(old, data) {
		return false, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("reading %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("creating %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o644); err != nil {
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return false, fmt.Errorf("syncing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return false, fmt.Errorf("replacing %s: %w", path, err)
	}
	committed = true
	if d, err := os.Open(dir); err == nil {
		syncErr := d.Sync()
		d.Close()
		if syncErr != nil {
			return true, fmt.Errorf("syncing %s: %w", dir, syncErr)
		}
	}
	return true, nil
}
