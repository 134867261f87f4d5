// Package ociarchive writes a single-layer container image as an OCI image
// layout tar, the format `ctr images import` reads, so that the cluster
// tests need neither a registry nor Docker.
package ociarchive

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"
)

const (
	mediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar"
	// annotationImageName is the annotation containerd names an imported
	// image after.
	annotationImageName = "io.containerd.image.name"
)

// epoch makes the archive reproducible: the same inputs give the same
// digests.
var epoch = time.Unix(0, 0).UTC()

// Image is what goes into the archive.
type Image struct {
	// Ref is the image's full name, e.g. "localhost/podwall/pause:test".
	Ref string
	// Entrypoint is the command the container runs.
	Entrypoint []string
	// Files maps absolute paths in the image to their contents; they are
	// executable.
	Files map[string][]byte
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int               `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// blob is a content-addressed file of the layout.
type blob struct {
	data   []byte
	digest string
}

func newBlob(data []byte) blob {
	sum := sha256.Sum256(data)
	return blob{data: data, digest: "sha256:" + hex.EncodeToString(sum[:])}
}

func (b blob) descriptor(mediaType string) descriptor {
	return descriptor{MediaType: mediaType, Digest: b.digest, Size: len(b.data)}
}

// Write writes img to w as an OCI image layout tar for this machine's
// architecture.
func Write(w io.Writer, img Image) error {
	if img.Ref == "" || !strings.Contains(img.Ref, ":") {
		return fmt.Errorf("image reference %q: want name:tag", img.Ref)
	}
	if len(img.Entrypoint) == 0 {
		return errors.New("image has no entrypoint")
	}
	layerTar, err := layer(img.Files)
	if err != nil {
		return err
	}
	layerBlob := newBlob(layerTar)
	plat := platform{Architecture: runtime.GOARCH, OS: "linux"}

	configJSON, err := json.Marshal(map[string]any{
		"architecture": plat.Architecture,
		"os":           plat.OS,
		"created":      epoch.Format(time.RFC3339),
		"config":       map[string]any{"Entrypoint": img.Entrypoint, "WorkingDir": "/"},
		// Uncompressed, the layer's digest is its diff ID.
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerBlob.digest}},
	})
	if err != nil {
		return fmt.Errorf("encoding image config: %w", err)
	}
	configBlob := newBlob(configJSON)

	manifestJSON, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeManifest,
		"config":        configBlob.descriptor(mediaTypeConfig),
		"layers":        []descriptor{layerBlob.descriptor(mediaTypeLayer)},
	})
	if err != nil {
		return fmt.Errorf("encoding image manifest: %w", err)
	}
	manifestBlob := newBlob(manifestJSON)
	manifestDesc := manifestBlob.descriptor(mediaTypeManifest)
	manifestDesc.Annotations = map[string]string{annotationImageName: img.Ref}
	manifestDesc.Platform = &plat

	indexJSON, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeIndex,
		"manifests":     []descriptor{manifestDesc},
	})
	if err != nil {
		return fmt.Errorf("encoding image index: %w", err)
	}

	tw := tar.NewWriter(w)
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", indexJSON},
	}
	for _, b := range []blob{layerBlob, configBlob, manifestBlob} {
		files = append(files, struct {
			name string
			data []byte
		}{"blobs/sha256/" + strings.TrimPrefix(b.digest, "sha256:"), b.data})
	}
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: epoch}); err != nil {
			return fmt.Errorf("writing archive: %w", err)
		}
	}
	for _, f := range files {
		if err := writeFile(tw, f.name, 0o644, f.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("writing archive: %w", err)
	}
	return nil
}

// layer builds the root filesystem: the directories a runtime mounts over
// and the image's files.
func layer(files map[string][]byte) ([]byte, error) {
	if len(files) == 0 {
		return nil, errors.New("image has no files")
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, dir := range []string{"dev/", "etc/", "proc/", "run/", "sys/", "tmp/"} {
		mode := int64(0o755)
		if dir == "tmp/" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: mode, ModTime: epoch}); err != nil {
			return nil, fmt.Errorf("writing layer: %w", err)
		}
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		clean := path.Clean("/" + name)
		if clean != name || strings.Count(clean, "/") != 1 {
			return nil, fmt.Errorf("image file %q: want an absolute path directly under /", name)
		}
		if err := writeFile(tw, strings.TrimPrefix(clean, "/"), 0o755, files[name]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("writing layer: %w", err)
	}
	return buf.Bytes(), nil
}

func writeFile(tw *tar.Writer, name string, mode int64, data []byte) error {
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: epoch}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return nil
}
