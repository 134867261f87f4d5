// Command mkimage writes a one-layer image archive for `ctr images import`
// from local files (see package ociarchive):
//
//	mkimage -o pause.tar -ref localhost/podwall/pause:test -entrypoint /pause -add bin/pause:/pause
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/podwall/podwall/test/k8s/ociarchive"
)

// fileList collects repeated -add SRC:DST flags.
type fileList []string

func (f *fileList) String() string     { return strings.Join(*f, ",") }
func (f *fileList) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	flags := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	out := flags.String("o", "", "output archive")
	ref := flags.String("ref", "", "image reference, name:tag")
	entrypoint := flags.String("entrypoint", "", "command, space-separated")
	var adds fileList
	flags.Var(&adds, "add", "SRC:DST, a file to put at DST in the image (repeatable)")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("-o is required")
	}
	img := ociarchive.Image{Ref: *ref, Entrypoint: strings.Fields(*entrypoint), Files: map[string][]byte{}}
	for _, add := range adds {
		src, dst, ok := strings.Cut(add, ":")
		if !ok {
			return fmt.Errorf("-add %q: want SRC:DST", add)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("-add %q: %w", add, err)
		}
		img.Files[dst] = data
	}
	var buf bytes.Buffer
	if err := ociarchive.Write(&buf, img); err != nil {
		return err
	}
	// Write then rename: an interrupted run leaves no truncated archive.
	tmp, err := os.CreateTemp(filepath.Dir(*out), ".mkimage-*")
	if err != nil {
		return fmt.Errorf("creating %s: %w", *out, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), *out); err != nil {
		return fmt.Errorf("writing %s: %w", *out, err)
	}
	return nil
}
