package api

import (
	"sync"
	"time"
)

// readerGrace is how long the server remembers a restore or clone it
// started when it decides whether a backup may be deleted: longer than any
// visibility store takes to list a new run (Temporal's list is eventually
// consistent; Elasticsearch refreshes about every second, and a loaded dev
// server was seen listing a run seconds late).
const readerGrace = 5 * time.Minute

// startedReaders remembers the restores and clones this server started in
// the last readerGrace, by repository and backup, so that a delete does not
// depend on the visibility store having listed them yet. Safe for
// concurrent use.
type startedReaders struct {
	mu   sync.Mutex
	runs map[string][]startedRun // repository/backup -> runs
}

type startedRun struct {
	workflowID string
	at         time.Time
}

// add records that workflowID, started at now, reads key's backup.
func (s *startedReaders) add(key, workflowID string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.runs == nil {
		s.runs = map[string][]startedRun{}
	}
	s.runs[key] = append(s.prune(key, now), startedRun{workflowID: workflowID, at: now})
}

// recent returns the workflow ids of the runs on key's backup started in
// the readerGrace before now, oldest first.
func (s *startedReaders) recent(key string, now time.Time) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	runs := s.prune(key, now)
	if len(runs) == 0 {
		delete(s.runs, key)
	} else {
		s.runs[key] = runs
	}
	ids := make([]string, len(runs))
	for i, r := range runs {
		ids[i] = r.workflowID
	}
	return ids
}

// prune is key's runs without those older than readerGrace. Callers hold mu.
func (s *startedReaders) prune(key string, now time.Time) []startedRun {
	runs := s.runs[key][:0:0]
	for _, r := range s.runs[key] {
		if now.Sub(r.at) < readerGrace {
			runs = append(runs, r)
		}
	}
	return runs
}
