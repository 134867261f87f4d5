package ociarchive_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/podwall/podwall/test/k8s/ociarchive"
)

// Every blob the index reaches is in the archive under its digest, the
// index names the image the way containerd reads it, and the same image
// always gives the same archive.
func TestWriteIsAConsistentLayout(t *testing.T) {
	var buf bytes.Buffer
	img := ociarchive.Image{Ref: "localhost/x/pause:test", Entrypoint: []string{"/pause"}, Files: map[string][]byte{"/pause": []byte("binary")}}
	if err := ociarchive.Write(&buf, img); err != nil {
		t.Fatal(err)
	}
	archive := bytes.Clone(buf.Bytes())
	files := map[string][]byte{}
	tr := tar.NewReader(&buf)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		files[hdr.Name] = data
	}
	for name, data := range files {
		if digest, ok := strings.CutPrefix(name, "blobs/sha256/"); ok && digest != "" {
			sum := sha256.Sum256(data)
			if hex.EncodeToString(sum[:]) != digest {
				t.Errorf("blob %s has digest %x", name, sum)
			}
		}
	}
	var index struct {
		Manifests []struct {
			Digest      string
			Annotations map[string]string
		}
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	if len(index.Manifests) != 1 || index.Manifests[0].Annotations["io.containerd.image.name"] != img.Ref {
		t.Fatalf("index: %+v", index)
	}
	var manifest struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	if err := json.Unmarshal(files["blobs/sha256/"+strings.TrimPrefix(index.Manifests[0].Digest, "sha256:")], &manifest); err != nil {
		t.Fatal(err)
	}
	for _, d := range append([]string{manifest.Config.Digest}, manifest.Layers[0].Digest) {
		if _, ok := files["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")]; !ok {
			t.Errorf("blob %s missing", d)
		}
	}
	var again bytes.Buffer
	if err := ociarchive.Write(&again, img); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.Bytes(), archive) {
		t.Error("the same image gave two different archives")
	}
}

func TestWriteRefusesBadInput(t *testing.T) {
	for name, img := range map[string]ociarchive.Image{
		"no tag":        {Ref: "localhost/x", Entrypoint: []string{"/p"}, Files: map[string][]byte{"/p": nil}},
		"no entrypoint": {Ref: "x:1", Files: map[string][]byte{"/p": nil}},
		"no files":      {Ref: "x:1", Entrypoint: []string{"/p"}},
		"nested path":   {Ref: "x:1", Entrypoint: []string{"/p"}, Files: map[string][]byte{"/a/p": nil}},
		"relative path": {Ref: "x:1", Entrypoint: []string{"/p"}, Files: map[string][]byte{"p": nil}},
	} {
		if err := ociarchive.Write(io.Discard, img); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
