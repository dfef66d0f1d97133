// Package deploy reads Raksha's deployment files — docker-compose.yml, the
// Dockerfile, the systemd units in deploy/systemd — for the tests that check
// them offline against the binaries they run (deploy, worker and starter
// tests). No Docker engine runs where they are tested and no image can be
// pulled, so these files are validated, never started, there.
package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Module is Raksha's module path.
const Module = "github.com/raksha-backup/raksha"

// Root is the repository's top directory (where docker-compose.yml lives):
// the nearest directory above the working directory (a test's package
// directory) whose go.mod declares Module.
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(bytes.TrimSpace(b), []byte("module "+Module+"\n")) {
			return dir, nil
		}
		up := filepath.Dir(dir)
		if up == dir {
			return "", errors.New("deploy: no go.mod of " + Module + " above the working directory")
		}
		dir = up
	}
}

// Compose is the part of a compose file the checks read.
type Compose struct {
	Services map[string]Service `yaml:"services"`
	Secrets  map[string]struct {
		File string `yaml:"file"`
	} `yaml:"secrets"`
	Volumes map[string]any `yaml:"volumes"`
}

// Service is one compose service.
type Service struct {
	Image       string            `yaml:"image"`
	Build       any               `yaml:"build"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Expose      []string          `yaml:"expose"`
	Ports       []string          `yaml:"ports"`
	Secrets     []string          `yaml:"secrets"`
	Profiles    []string          `yaml:"profiles"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
}

// LoadCompose parses a compose file (anchors and merge keys resolved).
// Lists and maps must be written in the forms Service declares (command
// and entrypoint as lists, environment as a map).
func LoadCompose(path string) (*Compose, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c Compose
	if err := yaml.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(c.Services) == 0 {
		return nil, fmt.Errorf("%s: no services", path)
	}
	return &c, nil
}

// Names returns the service names, sorted.
func (c *Compose) Names() []string {
	var n []string
	for k := range c.Services {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// Mount returns the host path (relative to the compose file's directory)
// bind-mounted at container path dst, or "".
func (s Service) Mount(dst string) string {
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[1] == dst && (strings.HasPrefix(parts[0], ".") || strings.HasPrefix(parts[0], "/")) {
			return parts[0]
		}
	}
	return ""
}

// HealthURL returns the URL a health check asks with curl or wget, or nil.
func (s Service) HealthURL() *url.URL {
	if s.Healthcheck == nil {
		return nil
	}
	for _, a := range s.Healthcheck.Test {
		if strings.HasPrefix(a, "http://") || strings.HasPrefix(a, "https://") {
			u, err := url.Parse(a)
			if err == nil {
				return u
			}
		}
	}
	return nil
}

// Port returns the port of a HOST:PORT or :PORT address.
func Port(addr string) (int, error) {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(p)
}

// Instruction is one Dockerfile instruction.
type Instruction struct {
	Line  int
	Cmd   string // upper case: FROM, RUN, COPY, ...
	Args  string // the rest, continuation lines joined
	Stage int    // index of the stage it belongs to (FROM starts one)
}

// Dockerfile is a parsed Dockerfile.
type Dockerfile struct {
	Instructions []Instruction
	Stages       []Stage
}

// Stage is one FROM ... [AS name] stage.
type Stage struct {
	Image, Name string
	Line        int
}

// ParseDockerfile reads a Dockerfile: comments dropped, continuation lines
// (ending in a backslash) joined, instructions split from their arguments.
func ParseDockerfile(path string) (*Dockerfile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	d := &Dockerfile{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	var cur strings.Builder
	start, n := 0, 0
	flush := func() error {
		s := strings.TrimSpace(cur.String())
		cur.Reset()
		if s == "" {
			return nil
		}
		cmd, args, _ := strings.Cut(s, " ")
		in := Instruction{Line: start, Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args), Stage: len(d.Stages) - 1}
		if in.Cmd == "FROM" {
			f := strings.Fields(in.Args)
			var st Stage
			for len(f) > 0 && strings.HasPrefix(f[0], "--") {
				f = f[1:]
			}
			if len(f) == 0 {
				return fmt.Errorf("%s:%d: FROM without an image", path, start)
			}
			st.Image, st.Line = f[0], start
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.Name = f[2]
			}
			d.Stages = append(d.Stages, st)
			in.Stage = len(d.Stages) - 1
		} else if in.Stage < 0 && in.Cmd != "ARG" {
			return fmt.Errorf("%s:%d: %s before the first FROM", path, start, in.Cmd)
		}
		d.Instructions = append(d.Instructions, in)
		return nil
	}
	for sc.Scan() {
		n++
		line := sc.Text()
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "#") || (t == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if strings.HasSuffix(t, "\\") {
			cur.WriteString(strings.TrimSuffix(t, "\\"))
			cur.WriteString(" ")
			continue
		}
		cur.WriteString(t)
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if cur.Len() > 0 {
		return nil, fmt.Errorf("%s: ends in a continuation line", path)
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if len(d.Stages) == 0 {
		return nil, fmt.Errorf("%s: no FROM", path)
	}
	return d, nil
}

// Unit is a systemd unit file: section → key → values (in order; a key may
// repeat).
type Unit map[string]map[string][]string

// ParseUnit reads a systemd unit file (comments dropped, no continuation
// lines: Raksha's units have none).
func ParseUnit(path string) (Unit, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	u := Unit{}
	sec := ""
	for i, line := range strings.Split(string(data), "\n") {
		t := strings.TrimSpace(line)
		switch {
		case t == "" || strings.HasPrefix(t, "#") || strings.HasPrefix(t, ";"):
		case strings.HasPrefix(t, "[") && strings.HasSuffix(t, "]"):
			sec = t[1 : len(t)-1]
			if u[sec] == nil {
				u[sec] = map[string][]string{}
			}
		case strings.HasSuffix(t, "\\"):
			return nil, fmt.Errorf("%s:%d: continuation lines are not supported here", path, i+1)
		default:
			k, v, ok := strings.Cut(t, "=")
			if !ok || sec == "" {
				return nil, fmt.Errorf("%s:%d: not KEY=VALUE in a section: %q", path, i+1, t)
			}
			u[sec][k] = append(u[sec][k], v)
		}
	}
	return u, nil
}

// Get returns the last value of key in section, or "".
func (u Unit) Get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// Environment returns the unit's Environment= assignments (no quoting:
// Raksha's units use none).
func (u Unit) Environment() map[string]string {
	env := map[string]string{}
	for _, line := range u["Service"]["Environment"] {
		for _, kv := range strings.Fields(line) {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
	}
	return env
}

// ExecStart returns the program and arguments of the unit's ExecStart=,
// with %i replaced by instance (no quoting: Raksha's units use none).
func (u Unit) ExecStart(instance string) (string, []string, error) {
	line := strings.TrimLeft(u.Get("Service", "ExecStart"), "-@:+!")
	f := strings.Fields(strings.ReplaceAll(line, "%i", instance))
	if len(f) == 0 {
		return "", nil, errors.New("no ExecStart")
	}
	for _, a := range f {
		if strings.ContainsAny(a, `"'%$`) {
			return "", nil, fmt.Errorf("ExecStart argument %q: quoting, specifiers other than %%i and variables are not supported here", a)
		}
	}
	return f[0], f[1:], nil
}
