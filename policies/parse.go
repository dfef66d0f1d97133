package policies

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // time zones must resolve the same on every machine

	"gopkg.in/yaml.v3"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/repo"
)

// FieldError is one thing wrong in a policy file.
type FieldError struct {
	File         string
	Line, Column int
	// Field is the path of the field, such as schedule.cron or
	// hooks.pre[0].path; empty for the document itself.
	Field string
	Msg   string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Column > 0 {
			fmt.Fprintf(&b, ":%d", e.Column)
		}
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ValidationError lists everything wrong in one or more policy files, in
// file and line order.
type ValidationError struct {
	Errs []*FieldError
}

func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Errs))
	for i, fe := range e.Errs {
		lines[i] = fe.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns the field errors.
func (e *ValidationError) Unwrap() []error {
	out := make([]error, len(e.Errs))
	for i, fe := range e.Errs {
		out[i] = fe
	}
	return out
}

func (e *ValidationError) sort() {
	sort.SliceStable(e.Errs, func(i, j int) bool {
		a, b := e.Errs[i], e.Errs[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
}

// Load reads the policies of a file, or of every *.yaml and *.yml file in
// a directory (not recursive). All errors of all files come back together
// as a *ValidationError; policy names must be unique across the files.
func Load(path string) ([]*Policy, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load policies: %w", err)
	}
	files := []string{path}
	if st.IsDir() {
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, fmt.Errorf("load policies: %w", err)
		}
		files = files[:0]
		for _, e := range entries {
			ext := filepath.Ext(e.Name())
			if !e.IsDir() && (ext == ".yaml" || ext == ".yml") {
				files = append(files, filepath.Join(path, e.Name()))
			}
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("load policies: no *.yaml or *.yml file in %s", path)
		}
	}
	var all []*Policy
	verr := &ValidationError{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("load policies: %w", err)
		}
		ps, err := Parse(f, data)
		var ve *ValidationError
		switch {
		case errors.As(err, &ve):
			verr.Errs = append(verr.Errs, ve.Errs...)
		case err != nil:
			return nil, err
		}
		all = append(all, ps...)
	}
	if err := checkUnique(all); err != nil {
		verr.Errs = append(verr.Errs, err.Errs...)
	}
	if len(verr.Errs) > 0 {
		verr.sort()
		return nil, verr
	}
	return all, nil
}

func checkUnique(ps []*Policy) *ValidationError {
	seen := map[string]*Policy{}
	ve := &ValidationError{}
	for _, p := range ps {
		if first, ok := seen[p.Name]; ok {
			ve.Errs = append(ve.Errs, &FieldError{File: p.File, Line: p.Line, Column: p.Column, Field: "name",
				Msg: fmt.Sprintf("policy %q is also defined at %s:%d", p.Name, first.File, first.Line)})
			continue
		}
		seen[p.Name] = p
	}
	return ve
}

// Parse reads the policies in data (one per YAML document) and validates
// them; file names the source in errors. The error, if any, is a
// *ValidationError listing every problem found.
func Parse(file string, data []byte) ([]*Policy, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	verr := &ValidationError{}
	var out []*Policy
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			verr.Errs = append(verr.Errs, syntaxError(file, err))
			break
		}
		d := &decoder{file: file}
		p := d.policy(&doc)
		verr.Errs = append(verr.Errs, d.errs...)
		if len(d.errs) == 0 {
			out = append(out, p)
		}
	}
	if len(out) == 0 && len(verr.Errs) == 0 {
		verr.Errs = append(verr.Errs, &FieldError{File: file, Msg: "no policy in the file"})
	}
	if err := checkUnique(out); err != nil {
		verr.Errs = append(verr.Errs, err.Errs...)
	}
	if len(verr.Errs) > 0 {
		verr.sort()
		return nil, verr
	}
	return out, nil
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError turns a YAML parser error into a FieldError with its line.
func syntaxError(file string, err error) *FieldError {
	msg := err.Error()
	fe := &FieldError{File: file, Msg: "YAML syntax: " + strings.TrimPrefix(msg, "yaml: ")}
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		fe.Line, _ = strconv.Atoi(m[1])
		fe.Msg = "YAML syntax: " + m[2]
		if strings.Contains(m[2], "alphabetic or numeric character") {
			fe.Msg += " (a value starting with * is an alias in YAML: quote cron expressions)"
		}
	}
	return fe
}

// decoder walks a policy document node by node, so that every error has
// the line and column of the value it is about.
type decoder struct {
	file string
	errs []*FieldError
}

func (d *decoder) errf(n *yaml.Node, field, format string, args ...any) {
	fe := &FieldError{File: d.file, Field: field, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		fe.Line, fe.Column = n.Line, n.Column
	}
	d.errs = append(d.errs, fe)
}

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "no value"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

// kv is a key of a mapping and its value.
type kv struct{ key, val *yaml.Node }

// fields is the handler of each known key of a mapping.
type fields map[string]func(n *yaml.Node, field string)

// mapping checks that n is a mapping with known, unique keys and calls the
// handler of each key's value. It returns the key node of each key present
// (errors about a field's presence or combination point at its key).
func (d *decoder) mapping(n *yaml.Node, field string, fs fields) map[string]kv {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		d.errf(n, field, "want a mapping of fields, got %s", kindName(n))
		return nil
	}
	known := make([]string, 0, len(fs))
	for k := range fs {
		known = append(known, k)
	}
	sort.Strings(known)
	present := map[string]kv{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		sub := join(field, k.Value)
		if k.Value == "<<" {
			d.errf(k, field, "merge keys (<<) are not supported")
			continue
		}
		h, ok := fs[k.Value]
		if !ok {
			msg := fmt.Sprintf("unknown field %q", k.Value)
			if s := suggest(k.Value, known); s != "" {
				msg += fmt.Sprintf("; did you mean %q?", s)
			} else {
				msg += " (known: " + strings.Join(known, ", ") + ")"
			}
			d.errf(k, sub, "%s", msg)
			continue
		}
		if _, dup := present[k.Value]; dup {
			d.errf(k, sub, "given twice (first at line %d)", present[k.Value].key.Line)
			continue
		}
		present[k.Value] = kv{key: k, val: deref(v)}
		h(deref(v), sub)
	}
	return present
}

func join(parent, key string) string {
	if parent == "" {
		return key
	}
	if strings.ContainsAny(key, ".[] ") {
		return fmt.Sprintf("%s[%q]", parent, key)
	}
	return parent + "." + key
}

// suggest returns the known name closest to s when it is a likely typo.
func suggest(s string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(strings.ToLower(s), k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func (d *decoder) str(n *yaml.Node, field string, dst *string) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		d.errf(n, field, "want a string, got %s", kindName(n))
		return
	}
	if strings.TrimSpace(n.Value) == "" {
		d.errf(n, field, "is empty")
		return
	}
	*dst = n.Value
}

func (d *decoder) boolean(n *yaml.Node, field string, dst *bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		d.errf(n, field, "want true or false, got %s", kindName(n))
		return
	}
	var b bool
	if err := n.Decode(&b); err != nil {
		d.errf(n, field, "want true or false: %v", err)
		return
	}
	*dst = b
}

func (d *decoder) count(n *yaml.Node, field string, dst *int) {
	var v int
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&v) != nil {
		d.errf(n, field, "want a whole number, got %s", kindName(n))
		return
	}
	if v < 0 {
		d.errf(n, field, "%d: must be 0 or more", v)
		return
	}
	*dst = v
}

// duration reads a Go duration (90s, 15m, 1h30m) or whole days or weeks
// (7d, 2w, 1d12h) and checks it is within [lo, hi] (hi 0: no upper bound).
func (d *decoder) duration(n *yaml.Node, field string, lo, hi time.Duration, dst *time.Duration) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		d.errf(n, field, "want a duration such as 30s, 15m, 2h or 7d, got %s", kindName(n))
		return
	}
	v, err := ParseDuration(n.Value)
	if err != nil {
		d.errf(n, field, "%v", err)
		return
	}
	if v < lo {
		d.errf(n, field, "%s is too short: at least %s", n.Value, FormatDuration(lo))
		return
	}
	if hi > 0 && v > hi {
		d.errf(n, field, "%s is too long: at most %s", n.Value, FormatDuration(hi))
		return
	}
	*dst = v
}

var dayDuration = regexp.MustCompile(`^(\d+)([dw])(.*)$`)

// ParseDuration parses a Go duration (90s, 15m, 1h30m) or one that starts
// with whole days or weeks (7d, 2w, 1d12h).
func ParseDuration(s string) (time.Duration, error) {
	bad := fmt.Errorf("%q is not a duration: want a number with a unit such as 30s, 15m, 2h or 7d", s)
	s = strings.TrimSpace(s)
	tooLong := func() error {
		return fmt.Errorf("%q is not a duration: longer than the longest one, %s", s, FormatDuration(math.MaxInt64))
	}
	var total time.Duration
	if m := dayDuration.FindStringSubmatch(s); m != nil {
		unit := 24 * time.Hour
		if m[2] == "w" {
			unit *= 7
		}
		n, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil || n > int64(math.MaxInt64/unit) {
			return 0, tooLong()
		}
		total = time.Duration(n) * unit
		if m[3] == "" {
			return total, nil
		}
		s = m[3]
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return 0, bad
	}
	if v > math.MaxInt64-total {
		return 0, tooLong()
	}
	return total + v, nil
}

// FormatDuration writes a duration the way policies spell them: 400d,
// 6h, 1h30m, 90s.
func FormatDuration(d time.Duration) string {
	const day = 24 * time.Hour
	if d >= day && d%day == 0 {
		return fmt.Sprintf("%dd", d/day)
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// strings reads a list of strings, or a single string as a list of one.
func (d *decoder) strList(n *yaml.Node, field string, dst *[]string) {
	if n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
		var s string
		d.str(n, field, &s)
		if s != "" {
			*dst = []string{s}
		}
		return
	}
	if n.Kind != yaml.SequenceNode {
		d.errf(n, field, "want a list of strings, got %s", kindName(n))
		return
	}
	for i, item := range n.Content {
		var s string
		d.str(deref(item), fmt.Sprintf("%s[%d]", field, i), &s)
		if s != "" {
			*dst = append(*dst, s)
		}
	}
}

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func (d *decoder) name(n *yaml.Node, field string, max int, dst *string) {
	var s string
	d.str(n, field, &s)
	if s == "" {
		return
	}
	if !namePattern.MatchString(s) || len(s) > max {
		d.errf(n, field, "%q: want letters, digits, '.', '_' and '-', starting with a letter or digit, at most %d characters", s, max)
		return
	}
	*dst = s
}

func (d *decoder) oneOf(n *yaml.Node, field string, allowed []string, dst *string) {
	var s string
	d.str(n, field, &s)
	if s == "" {
		return
	}
	for _, a := range allowed {
		if s == a {
			*dst = s
			return
		}
	}
	d.errf(n, field, "%q: want %s", s, strings.Join(allowed, " or "))
}

// policy decodes and validates one document.
func (d *decoder) policy(doc *yaml.Node) *Policy {
	p := &Policy{File: d.file, Line: doc.Line, Column: doc.Column}
	root := doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	root = deref(root)
	if root.Kind == yaml.MappingNode {
		p.Line, p.Column = root.Line, root.Column
	}
	var paused bool
	present := d.mapping(root, "", fields{
		"kind":        func(n *yaml.Node, f string) { d.oneOf(n, f, []string{KindBackup, KindMaintenance, KindDrill}, &p.Kind) },
		"maintenance": func(n *yaml.Node, f string) { p.Maintenance = &Maintenance{}; d.maintenance(n, f, p.Maintenance) },
		"drill":       func(n *yaml.Node, f string) { p.Drill = &Drill{}; d.drill(n, f, p.Drill) },
		"project":     func(n *yaml.Node, f string) { d.str(n, f, &p.Project) },
		"name":        func(n *yaml.Node, f string) { d.name(n, f, 63, &p.Name) },
		"description": func(n *yaml.Node, f string) { d.str(n, f, &p.Description) },
		"workload":    func(n *yaml.Node, f string) { d.name(n, f, 128, &p.Workload) },
		"selector":    func(n *yaml.Node, f string) { d.selector(n, f, &p.Selector) },
		"schedule":    func(n *yaml.Node, f string) { d.schedule(n, f, &p.Schedule) },
		"consistency": func(n *yaml.Node, f string) { d.consistency(n, f, &p.Consistency) },
		"hooks":       func(n *yaml.Node, f string) { d.hooks(n, f, &p.Hooks) },
		"retention":   func(n *yaml.Node, f string) { d.retention(n, f, &p.Retention) },
		"labels":      func(n *yaml.Node, f string) { d.labels(n, f, &p.Labels) },
		"repository":  func(n *yaml.Node, f string) { d.name(n, f, 128, &p.Repository) },
		"paused":      func(n *yaml.Node, f string) { d.boolean(n, f, &paused) },
	})
	if present == nil {
		return p
	}
	if p.Kind == "" {
		p.Kind = KindBackup
	}
	if _, ok := present["paused"]; ok {
		p.Paused = &paused
	}
	if p.Kind == KindMaintenance {
		if v, ok := present["drill"]; ok {
			d.errf(v.key, "drill", "only a policy of kind drill has a drill section")
		}
		if v, ok := present["project"]; ok {
			d.errf(v.key, "project", "a maintenance policy acts on a whole repository, not on a project")
		}
		d.maintenancePolicy(root, p, present)
		return p
	}
	if m, ok := present["maintenance"]; ok {
		d.errf(m.key, "maintenance", "only a policy of kind maintenance has a maintenance section (add kind: maintenance, or drop it)")
	}
	if p.Kind == KindDrill {
		d.drillPolicy(root, p, present)
		return p
	}
	if v, ok := present["drill"]; ok {
		d.errf(v.key, "drill", "only a policy of kind drill has a drill section (add kind: drill, or drop it)")
	}
	if v, ok := present["project"]; ok {
		d.errf(v.key, "project", "a backup policy names its project as selector.project")
	}
	for _, req := range []string{"name", "selector", "schedule", "repository"} {
		if _, ok := present[req]; !ok {
			d.errf(root, req, "missing (every policy needs name, selector, schedule and repository)")
		}
	}
	if p.Consistency.Mode == "" {
		p.Consistency.Mode = "app"
	}
	if p.Consistency.Mode == "app" {
		if p.Consistency.FreezeTimeout == 0 {
			p.Consistency.FreezeTimeout = DefaultFreezeTimeout
		}
		if p.Consistency.OnAppFailure == "" {
			p.Consistency.OnAppFailure = "fail"
		}
	}
	if h, ok := present["hooks"]; ok && p.Consistency.Mode == "crash" && (len(p.Hooks.Pre) > 0 || len(p.Hooks.Post) > 0) {
		d.errf(h.key, "hooks", "hooks run around the guest freeze, and consistency mode crash does not freeze: use mode app or drop the hooks")
	}
	if len(p.Hooks.Pre)+len(p.Hooks.Post) > 0 && p.Hooks.OnFailure == "" {
		p.Hooks.OnFailure = "fail"
	}
	if p.Workload == "" {
		p.Workload = p.Selector.Metadata[cloud.WorkloadKey]
	}
	if p.Workload == "" {
		p.Workload = p.Name
	}
	return p
}

func (d *decoder) selector(n *yaml.Node, field string, s *Selector) {
	present := d.mapping(n, field, fields{
		"project":      func(n *yaml.Node, f string) { d.str(n, f, &s.Project) },
		"metadata":     func(n *yaml.Node, f string) { d.metadata(n, f, s) },
		"tag":          func(n *yaml.Node, f string) { d.str(n, f, &s.Tag) },
		"stack":        func(n *yaml.Node, f string) { d.str(n, f, &s.Stack) },
		"server_group": func(n *yaml.Node, f string) { d.str(n, f, &s.ServerGroup) },
		"servers":      func(n *yaml.Node, f string) { d.servers(n, f, s) },
		"all_projects": func(n *yaml.Node, f string) { d.boolean(n, f, &s.AllProjects) },
		"include":      func(n *yaml.Node, f string) { d.regexps(n, f, &s.Include) },
		"exclude":      func(n *yaml.Node, f string) { d.regexps(n, f, &s.Exclude) },
	})
	if present == nil {
		return
	}
	var kinds []string
	for _, k := range []string{"metadata", "tag", "stack", "server_group", "servers"} {
		if _, ok := present[k]; ok {
			kinds = append(kinds, k)
		}
	}
	// Report the second one in the file.
	sort.SliceStable(kinds, func(i, j int) bool { return present[kinds[i]].key.Line < present[kinds[j]].key.Line })
	switch {
	case len(kinds) == 0:
		d.errf(n, field, "selects no servers: give one of metadata, tag, stack, server_group or servers")
	case len(kinds) > 1:
		d.errf(present[kinds[1]].key, join(field, kinds[1]), "a selector uses one of metadata, tag, stack, server_group or servers, and %s is given too", kinds[0])
	}
}

func (d *decoder) metadata(n *yaml.Node, field string, s *Selector) {
	if n.Kind != yaml.MappingNode {
		d.errf(n, field, "want a mapping such as {%s: NAME}, got %s", cloud.WorkloadKey, kindName(n))
		return
	}
	if len(n.Content) == 0 {
		d.errf(n, field, "is empty: give %s: NAME", cloud.WorkloadKey)
		return
	}
	d.mapping(n, field, fields{
		cloud.WorkloadKey: func(n *yaml.Node, f string) {
			var v string
			d.str(n, f, &v)
			if v != "" {
				s.Metadata = map[string]string{cloud.WorkloadKey: v}
			}
		},
	})
}

// labels reads the policy's user labels (string keys and values): a
// system label (activities.SystemLabels: workload, project, policy, which
// Raksha sets from the policy itself) is refused, naming it.
func (d *decoder) labels(n *yaml.Node, field string, dst *map[string]string) {
	if n.Kind != yaml.MappingNode {
		d.errf(n, field, "want a mapping of labels such as {team: shop}, got %s", kindName(n))
		return
	}
	out := map[string]string{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], deref(n.Content[i+1])
		sub := join(field, k.Value)
		if err := activities.CheckUserLabels(map[string]string{k.Value: ""}); err != nil {
			d.errf(k, sub, "%v", err)
			continue
		}
		if !repo.ValidName(k.Value) {
			d.errf(k, sub, "label name %q: use letters, digits, '.', '_' and '-'", k.Value)
			continue
		}
		if _, dup := out[k.Value]; dup {
			d.errf(k, sub, "given twice")
			continue
		}
		var val string
		d.str(v, sub, &val)
		out[k.Value] = val
	}
	*dst = out
}

func (d *decoder) servers(n *yaml.Node, field string, s *Selector) {
	if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
		d.errf(n, field, "want a non-empty list of server ids, got %s", kindName(n))
		return
	}
	seen := map[string]int{}
	for i, item := range n.Content {
		f := fmt.Sprintf("%s[%d]", field, i)
		var id string
		d.str(deref(item), f, &id)
		if id == "" {
			continue
		}
		if j, dup := seen[id]; dup {
			d.errf(item, f, "server %q is listed twice (also %s[%d])", id, field, j)
			continue
		}
		seen[id] = i
		s.Servers = append(s.Servers, id)
	}
}

func (d *decoder) regexps(n *yaml.Node, field string, dst *[]string) {
	var list []string
	d.strList(n, field, &list)
	items := n.Content
	if n.Kind == yaml.ScalarNode {
		items = []*yaml.Node{n}
	}
	for i, re := range list {
		f := field
		if n.Kind == yaml.SequenceNode {
			f = fmt.Sprintf("%s[%d]", field, i)
		}
		if _, err := regexp.Compile(re); err != nil {
			d.errf(items[min(i, len(items)-1)], f, "%q is not a valid regular expression: %s", re, strings.TrimPrefix(err.Error(), "error parsing regexp: "))
			continue
		}
		*dst = append(*dst, re)
	}
}

func (d *decoder) schedule(n *yaml.Node, field string, s *Schedule) {
	present := d.mapping(n, field, fields{
		"cron":           func(n *yaml.Node, f string) { d.cron(n, f, &s.Cron) },
		"every":          func(n *yaml.Node, f string) { d.duration(n, f, time.Second, 0, &s.Every) },
		"offset":         func(n *yaml.Node, f string) { d.duration(n, f, 0, 0, &s.Offset) },
		"time_zone":      func(n *yaml.Node, f string) { d.timeZone(n, f, &s.TimeZone) },
		"jitter":         func(n *yaml.Node, f string) { d.duration(n, f, 0, 0, &s.Jitter) },
		"catchup_window": func(n *yaml.Node, f string) { d.duration(n, f, 10*time.Second, 0, &s.CatchupWindow) },
	})
	if present == nil {
		return
	}
	_, hasCron := present["cron"]
	_, hasEvery := present["every"]
	switch {
	case !hasCron && !hasEvery:
		d.errf(n, field, "says no time: give cron (such as \"0 2 * * *\") or every (such as 6h)")
	case hasCron && hasEvery:
		d.errf(present["every"].key, join(field, "every"), "give cron or every, not both")
	}
	if off, ok := present["offset"]; ok {
		switch {
		case !hasEvery:
			d.errf(off.key, join(field, "offset"), "applies to every only (a cron expression says its own times)")
		case s.Every > 0 && s.Offset >= s.Every:
			d.errf(off.val, join(field, "offset"), "%s must be shorter than every (%s)", off.val.Value, present["every"].val.Value)
		}
	}
	if tz, ok := present["time_zone"]; ok && !hasCron {
		d.errf(tz.key, join(field, "time_zone"), "applies to cron only (an interval is the same in every time zone)")
	}
	if j, ok := present["jitter"]; ok && s.Every > 0 && s.Jitter >= s.Every {
		d.errf(j.val, join(field, "jitter"), "%s must be shorter than every (%s)", j.val.Value, present["every"].val.Value)
	}
	if s.CatchupWindow == 0 {
		s.CatchupWindow = DefaultCatchupWindow
	}
}

func (d *decoder) timeZone(n *yaml.Node, field string, dst *string) {
	var tz string
	d.str(n, field, &tz)
	if tz == "" {
		return
	}
	if tz == "Local" {
		d.errf(n, field, "%q depends on the machine: give an IANA name such as UTC or Europe/Berlin", tz)
		return
	}
	if _, err := time.LoadLocation(tz); err != nil {
		d.errf(n, field, "%q is not a known time zone: give an IANA name such as UTC or Europe/Berlin", tz)
		return
	}
	*dst = tz
}

func (d *decoder) cron(n *yaml.Node, field string, dst *string) {
	var c string
	d.str(n, field, &c)
	if c == "" {
		return
	}
	if err := ValidateCron(c); err != nil {
		d.errf(n, field, "%q: %v", c, err)
		return
	}
	*dst = strings.Join(strings.Fields(c), " ")
}

func (d *decoder) consistency(n *yaml.Node, field string, c *Consistency) {
	present := d.mapping(n, field, fields{
		"mode":           func(n *yaml.Node, f string) { d.oneOf(n, f, []string{"app", "crash"}, &c.Mode) },
		"on_app_failure": func(n *yaml.Node, f string) { d.oneOf(n, f, []string{"fail", "crash"}, &c.OnAppFailure) },
		"freeze_timeout": func(n *yaml.Node, f string) { d.duration(n, f, time.Second, 10*time.Minute, &c.FreezeTimeout) },
	})
	if present == nil {
		return
	}
	if c.Mode == "crash" {
		for _, k := range []string{"on_app_failure", "freeze_timeout"} {
			if v, ok := present[k]; ok {
				d.errf(v.key, join(field, k), "applies to mode app only (mode crash does not freeze)")
			}
		}
	}
}

func (d *decoder) hooks(n *yaml.Node, field string, h *Hooks) {
	d.mapping(n, field, fields{
		"pre":        func(n *yaml.Node, f string) { d.hookList(n, f, &h.Pre) },
		"post":       func(n *yaml.Node, f string) { d.hookList(n, f, &h.Post) },
		"on_failure": func(n *yaml.Node, f string) { d.oneOf(n, f, []string{"fail", "continue"}, &h.OnFailure) },
	})
}

func (d *decoder) hookList(n *yaml.Node, field string, dst *[]Hook) {
	if n.Kind != yaml.SequenceNode {
		d.errf(n, field, "want a list of hooks ({path: /usr/local/bin/flush, args: [...], timeout: 30s}), got %s", kindName(n))
		return
	}
	for i, item := range n.Content {
		if h, ok := d.hook(deref(item), fmt.Sprintf("%s[%d]", field, i)); ok {
			*dst = append(*dst, h)
		}
	}
}

// hook reads one guest program ({path, args, timeout, name}); ok is false
// when n is not a mapping.
func (d *decoder) hook(item *yaml.Node, f string) (Hook, bool) {
	var h Hook
	present := d.mapping(item, f, fields{
		"name":    func(n *yaml.Node, f string) { d.str(n, f, &h.Name) },
		"path":    func(n *yaml.Node, f string) { d.str(n, f, &h.Path) },
		"args":    func(n *yaml.Node, f string) { d.args(n, f, &h.Args) },
		"timeout": func(n *yaml.Node, f string) { d.duration(n, f, time.Second, time.Hour, &h.Timeout) },
	})
	if present == nil {
		return h, false
	}
	if p, ok := present["path"]; !ok {
		d.errf(item, join(f, "path"), "missing: the program to run in the guest")
	} else if h.Path != "" && !strings.HasPrefix(h.Path, "/") {
		d.errf(p.val, join(f, "path"), "%q: want an absolute path in the guest", h.Path)
	}
	if h.Timeout == 0 {
		h.Timeout = DefaultHookTimeout
	}
	return h, true
}

// args reads a list of arguments; unlike other strings, an argument may be
// empty, and numbers and booleans are taken as written.
func (d *decoder) args(n *yaml.Node, field string, dst *[]string) {
	if n.Kind != yaml.SequenceNode {
		d.errf(n, field, "want a list of arguments, got %s", kindName(n))
		return
	}
	for i, item := range n.Content {
		item = deref(item)
		if item.Kind != yaml.ScalarNode || item.Tag == "!!null" {
			d.errf(item, fmt.Sprintf("%s[%d]", field, i), "want a string, got %s", kindName(item))
			continue
		}
		*dst = append(*dst, item.Value)
	}
}

func (d *decoder) retention(n *yaml.Node, field string, r *Retention) {
	d.mapping(n, field, fields{
		"last":         func(n *yaml.Node, f string) { d.count(n, f, &r.Last) },
		"hourly":       func(n *yaml.Node, f string) { d.count(n, f, &r.Hourly) },
		"daily":        func(n *yaml.Node, f string) { d.count(n, f, &r.Daily) },
		"weekly":       func(n *yaml.Node, f string) { d.count(n, f, &r.Weekly) },
		"monthly":      func(n *yaml.Node, f string) { d.count(n, f, &r.Monthly) },
		"yearly":       func(n *yaml.Node, f string) { d.count(n, f, &r.Yearly) },
		"expire_after": func(n *yaml.Node, f string) { d.duration(n, f, time.Hour, 0, &r.ExpireAfter) },
	})
}

// maintenancePolicy checks a policy of kind maintenance: it needs name,
// schedule and repository, has no backup fields, and gets the defaults of
// its maintenance section (prune expired backups, gc, check).
func (d *decoder) maintenancePolicy(root *yaml.Node, p *Policy, present map[string]kv) {
	for _, req := range []string{"name", "schedule", "repository"} {
		if _, ok := present[req]; !ok {
			d.errf(root, req, "missing (a maintenance policy needs name, schedule and repository)")
		}
	}
	for _, f := range []string{"workload", "selector", "consistency", "hooks", "retention", "labels"} {
		if v, ok := present[f]; ok {
			d.errf(v.key, f, "a maintenance policy backs up nothing: %s belongs to a backup policy (its repository's expired backups are pruned whatever their workload)", f)
		}
	}
	if p.Maintenance == nil {
		p.Maintenance = &Maintenance{}
	}
	m := p.Maintenance
	if m.PruneExpired == nil {
		m.PruneExpired = ptr(true)
	}
	if m.GC == nil {
		m.GC = ptr(true)
	}
	if m.Verify == "" {
		m.Verify = "check"
	}
}

func ptr[T any](v T) *T { return &v }

func (d *decoder) maintenance(n *yaml.Node, field string, m *Maintenance) {
	d.mapping(n, field, fields{
		"prune_expired": func(n *yaml.Node, f string) { m.PruneExpired = new(bool); d.boolean(n, f, m.PruneExpired) },
		"gc":            func(n *yaml.Node, f string) { m.GC = new(bool); d.boolean(n, f, m.GC) },
		"gc_grace":      func(n *yaml.Node, f string) { d.duration(n, f, time.Second, 30*24*time.Hour, &m.GCGrace) },
		"verify":        func(n *yaml.Node, f string) { d.oneOf(n, f, []string{"none", "check", "full"}, &m.Verify) },
	})
}

// drillPolicy checks a policy of kind drill: it needs name, workload,
// schedule, repository and a drill section with a project and a health
// check; it has no backup fields; its drill project is not the workload's
// own.
func (d *decoder) drillPolicy(root *yaml.Node, p *Policy, present map[string]kv) {
	for _, req := range []string{"name", "workload", "schedule", "repository", "drill"} {
		if _, ok := present[req]; !ok {
			d.errf(root, req, "missing (a drill policy needs name, workload, schedule, repository and drill)")
		}
	}
	for _, f := range []string{"selector", "consistency", "hooks", "retention"} {
		if v, ok := present[f]; ok {
			d.errf(v.key, f, "a drill policy backs up nothing: %s belongs to a backup policy (a drill takes the newest backup of its workload)", f)
		}
	}
	dr := p.Drill
	if dr == nil {
		return
	}
	if p.Project != "" && dr.Project == p.Project {
		d.errf(present["drill"].val, "drill.project", "%q is the workload's own project: a drill clones into a separate drill project", dr.Project)
	}
	if dr.Timeout == 0 {
		dr.Timeout = DefaultDrillTimeout
	}
}

func (d *decoder) drill(n *yaml.Node, field string, dr *Drill) {
	present := d.mapping(n, field, fields{
		"project":    func(n *yaml.Node, f string) { d.str(n, f, &dr.Project) },
		"vms":        func(n *yaml.Node, f string) { d.uniqueList(n, f, "VM", &dr.VMs) },
		"networks":   func(n *yaml.Node, f string) { d.stringMap(n, f, &dr.Networks) },
		"flavors":    func(n *yaml.Node, f string) { d.stringMap(n, f, &dr.Flavors) },
		"post_hooks": func(n *yaml.Node, f string) { d.hookList(n, f, &dr.PostHooks) },
		"health_check": func(n *yaml.Node, f string) {
			if n.Kind != yaml.MappingNode {
				d.errf(n, f, "want one hook ({path: /usr/local/bin/check, args: [...], timeout: 2m}), got %s", kindName(n))
				return
			}
			dr.HealthCheck, _ = d.hook(n, f)
		},
		"timeout": func(n *yaml.Node, f string) { d.duration(n, f, time.Minute, 24*time.Hour, &dr.Timeout) },
	})
	if present == nil {
		return
	}
	if _, ok := present["project"]; !ok {
		d.errf(n, join(field, "project"), "missing: the project the drill clones into")
	}
	if _, ok := present["health_check"]; !ok {
		d.errf(n, join(field, "health_check"), "missing: the program that says, in every guest of the clone, whether it is healthy (exit 0)")
	}
}

// uniqueList reads a non-empty list of distinct strings.
func (d *decoder) uniqueList(n *yaml.Node, field, what string, dst *[]string) {
	if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
		d.errf(n, field, "want a non-empty list of %s names, got %s", what, kindName(n))
		return
	}
	seen := map[string]int{}
	for i, item := range n.Content {
		f := fmt.Sprintf("%s[%d]", field, i)
		var s string
		d.str(deref(item), f, &s)
		if s == "" {
			continue
		}
		if j, dup := seen[s]; dup {
			d.errf(item, f, "%s %q is listed twice (also %s[%d])", what, s, field, j)
			continue
		}
		seen[s] = i
		*dst = append(*dst, s)
	}
}

// stringMap reads a mapping of non-empty strings to non-empty strings (a
// remap of names or ids).
func (d *decoder) stringMap(n *yaml.Node, field string, dst *map[string]string) {
	if n.Kind != yaml.MappingNode {
		d.errf(n, field, "want a mapping of captured names or ids to new ones, got %s", kindName(n))
		return
	}
	out := map[string]string{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		var from, to string
		d.str(k, field, &from)
		if from == "" {
			continue
		}
		f := join(field, from)
		if _, dup := out[from]; dup {
			d.errf(k, f, "given twice")
			continue
		}
		d.str(v, f, &to)
		if to != "" {
			out[from] = to
		}
	}
	*dst = out
}
