package fsck

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/snugfs/snug/api"
)

// Incident is one error on one image and what snug did about it
// (api.Incident). It is written to disk before each step, so a restarted
// daemon resumes it.
type Incident = api.Incident

// ContainerRef is a container using an incident's image (api.ContainerRef).
type ContainerRef = api.ContainerRef

// Step is one step of the pipeline, as an incident records it (api.Step).
type Step = api.Step

// store keeps incidents as JSON files in one directory, one per incident,
// each replaced atomically (write, fsync, rename), so a crash leaves the
// last complete version.
type store struct {
	dir string

	mu        sync.Mutex // protects incidents; never held across I/O
	incidents map[string]*Incident
}

// maxIncidentFile bounds an incident file read back at start-up.
const maxIncidentFile = 4 << 20

func openStore(dir string) (*store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("incidents in %s: %w", dir, err)
	}
	s := &store{dir: dir, incidents: map[string]*Incident{}}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("incidents in %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if strings.HasSuffix(name, ".tmp") {
			os.Remove(filepath.Join(dir, name)) // a write a crash cut short
			continue
		}
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		inc, err := readIncident(filepath.Join(dir, name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.incidents[inc.ID] = inc
	}
	s.prune(maxKept)
	return s, errors.Join(errs...)
}

// maxKept bounds the incident records kept: the oldest closed ones beyond
// it are deleted when the daemon starts. Open incidents are always kept,
// and so are the log files of restarted containers (their tasks may still
// write to them).
const maxKept = 1000

func (s *store) prune(keep int) {
	all := s.list()
	closed := 0
	for _, inc := range all {
		if Final(inc.State) {
			closed++
		}
	}
	for _, inc := range all { // oldest first
		if closed <= keep {
			return
		}
		if !Final(inc.State) {
			continue
		}
		if err := os.Remove(filepath.Join(s.dir, inc.ID+".json")); err == nil {
			delete(s.incidents, inc.ID)
			closed--
		}
	}
}

func readIncident(path string) (*Incident, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.Size() > maxIncidentFile {
		return nil, fmt.Errorf("incident %s: too large or unreadable", path)
	}
	var inc Incident
	if err := json.NewDecoder(f).Decode(&inc); err != nil {
		return nil, fmt.Errorf("incident %s: %w", path, err)
	}
	if inc.ID == "" || inc.ID+".json" != filepath.Base(path) {
		return nil, fmt.Errorf("incident %s: id %q does not match its file", path, inc.ID)
	}
	inc.State = upgradeState(inc.State)
	if !slices.Contains(States, inc.State) {
		return nil, fmt.Errorf("incident %s: unknown state %q", path, inc.State)
	}
	return &inc, nil
}

// save writes inc (a copy is kept in memory) through a temporary file
// renamed over the record, so a reader or a crash finds the old record or
// the new one. durable syncs the record and its directory before it
// returns: see Doctor.save for which records need it. An incident is
// saved only by the goroutine that works it, so its writes never race
// each other.
func (s *store) save(inc *Incident, durable bool) error {
	inc.UpdatedAt = time.Now().UTC()
	data, err := json.MarshalIndent(inc, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(s.dir, inc.ID+".json")
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("incident %s: %w", inc.ID, err)
	}
	_, err = f.Write(data)
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil && durable {
		err = syncDir(s.dir)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("incident %s: %w", inc.ID, err)
	}
	cp := *inc
	cp.Steps = slices.Clone(inc.Steps)
	cp.Containers = slices.Clone(inc.Containers)
	s.mu.Lock()
	s.incidents[inc.ID] = &cp
	s.mu.Unlock()
	return nil
}

// list returns copies of every incident, oldest first.
func (s *store) list() []Incident {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Incident, 0, len(s.incidents))
	for _, inc := range s.incidents {
		cp := *inc
		cp.Steps = slices.Clone(inc.Steps)
		cp.Containers = slices.Clone(inc.Containers)
		out = append(out, cp)
	}
	slices.SortFunc(out, func(a, b Incident) int {
		if c := a.DetectedAt.Compare(b.DetectedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// syncDir makes the entries of dir durable: a renamed record's new name.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
