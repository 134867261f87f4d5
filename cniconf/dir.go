package cniconf

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// BackupDirName is the directory, inside the CNI config dir, holding the
// original of every file podwall changed or replaced, byte for byte, and the
// list of files it created. Runtimes skip directories.
const BackupDirName = ".podwall-backup"

// createdList names, one a line, the files podwall created; it has no config
// extension, so it cannot clash with a backed-up file.
const createdList = ".created"

// ErrNoConfig: the directory holds no network configuration to chain into.
var ErrNoConfig = errors.New("no network configuration")

// Change is one thing done (or, on a dry run, to be done) to the directory.
type Change struct {
	Action string // wrote, backed-up, removed, restored, unchanged
	File   string
}

func (c Change) String() string { return c.Action + " " + c.File }

// Dir is a CNI configuration directory.
type Dir struct {
	Path string
}

func (d Dir) file(name string) string   { return filepath.Join(d.Path, name) }
func (d Dir) backup(name string) string { return filepath.Join(d.Path, BackupDirName, name) }

// names lists what libcni.ConfFiles would consider: everything but directories.
func (d Dir) names() ([]string, error) {
	entries, err := os.ReadDir(d.Path)
	if err != nil {
		return nil, fmt.Errorf("reading CNI config dir: %w", err)
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Active returns the name of the configuration the runtime uses.
func (d Dir) Active() (string, error) {
	names, err := d.names()
	if err != nil {
		return "", err
	}
	active, ok := ActiveFile(names)
	if !ok {
		return "", fmt.Errorf("%s: %w (no *.conf, *.conflist or *.json file)", d.Path, ErrNoConfig)
	}
	return active, nil
}

// Chain inserts podwall after the main plugin of the active configuration,
// keeping the original in the backup dir. A single-plugin file is replaced
// by a conflist of the same name stem. Running it again changes nothing.
func (d Dir) Chain(agentSocket string, dryRun bool) ([]Change, error) {
	active, err := d.Active()
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(d.file(active))
	if err != nil {
		return nil, fmt.Errorf("reading the active configuration: %w", err)
	}
	newName, out, changed, err := Chain(active, data, agentSocket)
	if err != nil {
		return nil, err
	}
	if !changed {
		return []Change{{"unchanged", d.file(active)}}, nil
	}
	if newName != active {
		if err := d.mustBeActive(newName, active); err != nil {
			return nil, err
		}
	}
	created, err := d.created()
	if err != nil {
		return nil, err
	}
	var changes []Change
	keepBackup := !slices.Contains(created, active) && d.needsBackup(active, data)
	if keepBackup {
		changes = append(changes, Change{"backed-up", d.backup(active)})
	}
	changes = append(changes, Change{"wrote", d.file(newName)})
	if newName != active {
		changes = append(changes, Change{"removed", d.file(active)})
	}
	if dryRun {
		return changes, nil
	}
	info, err := os.Stat(d.file(active))
	if err != nil {
		return nil, err
	}
	if keepBackup {
		if err := d.saveBackup(active, data, info.Mode().Perm()); err != nil {
			return nil, err
		}
	}
	if newName != active {
		if err := d.addCreated(newName); err != nil {
			return nil, err
		}
	}
	if err := writeAtomic(d.file(newName), out, info.Mode().Perm()); err != nil {
		return nil, err
	}
	if newName != active {
		if err := os.Remove(d.file(active)); err != nil {
			return nil, fmt.Errorf("removing the converted %s: %w", active, err)
		}
	}
	return changes, nil
}

// WriteOwn writes podwall's own conflist as name, which must then be the
// configuration the runtime uses. A different file of that name is kept in
// the backup dir.
func (d Dir) WriteOwn(name string, content []byte, dryRun bool) ([]Change, error) {
	if filepath.Base(name) != name || !IsList(name) {
		return nil, fmt.Errorf("conflist name %q: want a plain file name ending in .conflist", name)
	}
	if err := d.mustBeActive(name, ""); err != nil {
		return nil, err
	}
	old, err := os.ReadFile(d.file(name))
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if exists && bytes.Equal(old, content) {
		return []Change{{"unchanged", d.file(name)}}, nil
	}
	created, err := d.created()
	if err != nil {
		return nil, err
	}
	_, backupErr := os.Stat(d.backup(name))
	keepBackup := exists && !slices.Contains(created, name) && errors.Is(backupErr, fs.ErrNotExist)
	var changes []Change
	if keepBackup {
		changes = append(changes, Change{"backed-up", d.backup(name)})
	}
	changes = append(changes, Change{"wrote", d.file(name)})
	if dryRun {
		return changes, nil
	}
	if keepBackup {
		info, err := os.Stat(d.file(name))
		if err != nil {
			return nil, err
		}
		if err := d.saveBackup(name, old, info.Mode().Perm()); err != nil {
			return nil, err
		}
	} else if !exists || slices.Contains(created, name) {
		if err := d.addCreated(name); err != nil {
			return nil, err
		}
	}
	if err := writeAtomic(d.file(name), content, 0o644); err != nil {
		return nil, err
	}
	return changes, nil
}

// Uninstall removes the files podwall created and puts every original back,
// byte for byte, then removes the backup dir. Without one it does nothing.
func (d Dir) Uninstall(dryRun bool) ([]Change, error) {
	entries, err := os.ReadDir(filepath.Join(d.Path, BackupDirName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the backup dir: %w", err)
	}
	created, err := d.created()
	if err != nil {
		return nil, err
	}
	var changes []Change
	var restore []string
	for _, e := range entries {
		if e.Name() != createdList && e.Type().IsRegular() {
			restore = append(restore, e.Name())
		}
	}
	for _, name := range created {
		if slices.Contains(restore, name) {
			continue // the restore replaces it
		}
		changes = append(changes, Change{"removed", d.file(name)})
		if !dryRun {
			if err := os.Remove(d.file(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return changes, fmt.Errorf("removing %s: %w", name, err)
			}
		}
	}
	for _, name := range restore {
		changes = append(changes, Change{"restored", d.file(name)})
		if dryRun {
			continue
		}
		data, err := os.ReadFile(d.backup(name))
		if err != nil {
			return changes, fmt.Errorf("reading backup of %s: %w", name, err)
		}
		info, err := os.Stat(d.backup(name))
		if err != nil {
			return changes, err
		}
		if err := writeAtomic(d.file(name), data, info.Mode().Perm()); err != nil {
			return changes, err
		}
	}
	if !dryRun {
		if err := os.RemoveAll(filepath.Join(d.Path, BackupDirName)); err != nil {
			return changes, fmt.Errorf("removing the backup dir: %w", err)
		}
	}
	return changes, nil
}

// mustBeActive refuses when name would not be the file the runtime picks
// once written (and replaced removed).
func (d Dir) mustBeActive(name, replaced string) error {
	names, err := d.names()
	if err != nil {
		return err
	}
	names = slices.DeleteFunc(names, func(n string) bool { return n == replaced })
	active, _ := ActiveFile(append(names, name))
	if active != name {
		return refuse(name, "would not be used: %s sorts before it in %s, and runtimes load the lexically first configuration", active, d.Path)
	}
	return nil
}

// needsBackup: data is the original of name the first time, or when it
// holds no podwall (someone rewrote the file since: that is the new original).
func (d Dir) needsBackup(name string, data []byte) bool {
	_, err := os.Stat(d.backup(name))
	return err != nil || !bytes.Contains(data, []byte(`"`+PluginType+`"`))
}

// saveBackup keeps data, the content of name, as its original.
func (d Dir) saveBackup(name string, data []byte, perm fs.FileMode) error {
	if err := os.MkdirAll(filepath.Join(d.Path, BackupDirName), 0o700); err != nil {
		return fmt.Errorf("creating the backup dir: %w", err)
	}
	return writeAtomic(d.backup(name), data, perm)
}

func (d Dir) created() ([]string, error) {
	data, err := os.ReadFile(d.backup(createdList))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the list of created files: %w", err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line != "" && filepath.Base(line) == line {
			out = append(out, line)
		}
	}
	return out, nil
}

func (d Dir) addCreated(name string) error {
	created, err := d.created()
	if err != nil || slices.Contains(created, name) {
		return err
	}
	if err := os.MkdirAll(filepath.Join(d.Path, BackupDirName), 0o700); err != nil {
		return fmt.Errorf("creating the backup dir: %w", err)
	}
	return writeAtomic(d.backup(createdList), []byte(strings.Join(append(created, name), "\n")+"\n"), 0o600)
}

// writeAtomic replaces path with data in one rename: a runtime reading the
// directory sees the old file or the new one, never a part. The temporary
// name has no config extension, so no runtime loads it.
func writeAtomic(path string, data []byte, perm fs.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) //nolint:errcheck // gone after the rename
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() //nolint:errcheck // best effort: the rename is done
		d.Close()
	}
	return nil
}
