package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

// TestWorkerTemporalOptions: the worker's YAML (and the flags merged into
// it) override the standard TEMPORAL_* variables, which fill what they
// leave empty.
func TestWorkerTemporalOptions(t *testing.T) {
	env := map[string]string{"TEMPORAL_CONFIG_FILE": filepath.Join(t.TempDir(), "none"), "TEMPORAL_ADDRESS": "env:7233", "TEMPORAL_NAMESPACE": "ns-env"}
	getenv := func(k string) string { return env[k] }
	var cfg Config
	opts, err := temporalOptions(&cfg, getenv)
	if err != nil || opts.HostPort != "env:7233" || opts.Namespace != "ns-env" {
		t.Errorf("from the environment: %s %s %v", opts.HostPort, opts.Namespace, err)
	}
	cfg.Temporal.Address = "yaml:7233"
	opts, err = temporalOptions(&cfg, getenv)
	if err != nil || opts.HostPort != "yaml:7233" || opts.Namespace != "ns-env" {
		t.Errorf("YAML address over TEMPORAL_ADDRESS: %s %s %v", opts.HostPort, opts.Namespace, err)
	}
}

// TestNewLogger: json writes one JSON object a line with the SDK's keys
// renamed; text is the default; anything else is refused.
func TestNewLogger(t *testing.T) {
	var buf bytes.Buffer
	l, err := newLogger(&buf, "json")
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hello", "WorkflowID", "wf-1")
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil || m["msg"] != "hello" || m["workflow_id"] != "wf-1" {
		t.Errorf("json line %q: %v %v", buf.String(), m, err)
	}
	buf.Reset()
	if l, err = newLogger(&buf, ""); err != nil {
		t.Fatal(err)
	}
	l.Info("hello")
	if !strings.Contains(buf.String(), "msg=hello") {
		t.Errorf("text line %q", buf.String())
	}
	if _, err := newLogger(&buf, "xml"); err == nil || !strings.Contains(err.Error(), "xml") {
		t.Errorf("log format xml: %v", err)
	}
}
