package api

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Actions the API authorizes, one per operation. A restore or clone of a
// backup into a project checks its action on both the backup's project
// and the target project.
const (
	ActionBackupList    = "backup:list"
	ActionBackupShow    = "backup:show"
	ActionBackupStart   = "backup:start"
	ActionBackupCancel  = "backup:cancel"
	ActionRestoreStart  = "restore:start"
	ActionRestoreList   = "restore:list"
	ActionRestoreShow   = "restore:show"
	ActionRestoreCancel = "restore:cancel"
	ActionCloneStart    = "clone:start"
	ActionCloneList     = "clone:list"
	ActionCloneShow     = "clone:show"
	ActionCloneCancel   = "clone:cancel"
	ActionCloneDelete   = "clone:delete"
	// ActionWorkloadList lists a project's workloads as discovery finds
	// them.
	ActionWorkloadList = "workload:list"
	// ActionBackupDelete deletes a backup's record (its chunks are left to
	// gc); ActionBackupProtect and ActionBackupUnprotect set and clear its
	// protection from delete and prune.
	ActionBackupDelete    = "backup:delete"
	ActionBackupProtect   = "backup:protect"
	ActionBackupUnprotect = "backup:unprotect"
	// ActionBackupFilesList lists a directory of a backup's disk;
	// ActionBackupFilesDownload reads a file's content out of it (both a
	// file-level restore: a member's by default).
	ActionBackupFilesList     = "backup:files:list"
	ActionBackupFilesDownload = "backup:files:download"
	// ActionQuotaShow shows a project's quotas and usage.
	ActionQuotaShow = "quota:show"
	// Tenant backup policies (schedules) of a project.
	ActionPolicyCreate = "policy:create"
	ActionPolicyList   = "policy:list"
	ActionPolicyShow   = "policy:show"
	ActionPolicyDelete = "policy:delete"
	// RuleAdmin is the rule that lets a caller act in any project with
	// its token's roles (oslo.policy's context_is_admin).
	RuleAdmin = "context_is_admin"
)

// DefaultRules are the policy's defaults, in oslo.policy's rule language:
// role:NAME, rule:NAME, @ (always), ! (never), not, and, or, parentheses.
// Keystone expands implied roles into a token (admin → member → reader),
// so member rules hold for admins and reader rules for members.
func DefaultRules() map[string]string {
	return map[string]string{
		RuleAdmin:           "role:admin",
		"project_reader":    "role:reader",
		"project_member":    "role:member",
		ActionBackupList:    "rule:project_reader",
		ActionBackupShow:    "rule:project_reader",
		ActionBackupStart:   "rule:project_member",
		ActionBackupCancel:  "rule:project_member",
		ActionRestoreStart:  "rule:project_member",
		ActionRestoreList:   "rule:project_reader",
		ActionRestoreShow:   "rule:project_reader",
		ActionRestoreCancel: "rule:project_member",
		ActionCloneStart:    "rule:project_member",
		ActionCloneList:     "rule:project_reader",
		ActionCloneShow:     "rule:project_reader",
		ActionCloneCancel:   "rule:project_member",
		ActionCloneDelete:   "rule:project_member",

		ActionWorkloadList:        "rule:project_reader",
		ActionBackupDelete:        "rule:project_member",
		ActionBackupProtect:       "rule:project_member",
		ActionBackupUnprotect:     "rule:project_member",
		ActionBackupFilesList:     "rule:project_member",
		ActionBackupFilesDownload: "rule:project_member",
		ActionQuotaShow:           "rule:project_reader",
		ActionPolicyCreate:        "rule:project_member",
		ActionPolicyList:          "rule:project_reader",
		ActionPolicyShow:          "rule:project_reader",
		ActionPolicyDelete:        "rule:project_member",
	}
}

// Policy decides whether roles allow an action. It is immutable once made.
type Policy struct {
	rules map[string]expr
}

// NewPolicy is the default rules with overrides on top; every rule must
// parse and every rule:NAME must name a rule.
func NewPolicy(overrides map[string]string) (*Policy, error) {
	src := DefaultRules()
	for k, v := range overrides {
		src[k] = v
	}
	p := &Policy{rules: map[string]expr{}}
	names := make([]string, 0, len(src))
	for k := range src {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		e, err := parseRule(src[k])
		if err != nil {
			return nil, fmt.Errorf("policy rule %q: %w", k, err)
		}
		p.rules[k] = e
	}
	for _, k := range names {
		if err := p.rules[k].check(p.rules, []string{k}); err != nil {
			return nil, fmt.Errorf("policy rule %q: %w", k, err)
		}
	}
	return p, nil
}

// LoadPolicy reads a YAML file of overrides (rule name: rule), as
// oslo.policy's policy.yaml; an empty path is the defaults.
func LoadPolicy(path string) (*Policy, error) {
	if path == "" {
		return NewPolicy(nil)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy file: %w", err)
	}
	var over map[string]string
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&over); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("policy file %s: %w", path, err)
	}
	p, err := NewPolicy(over)
	if err != nil {
		return nil, fmt.Errorf("policy file %s: %w", path, err)
	}
	return p, nil
}

// Allowed reports whether roles pass the rule of action; an action without
// a rule is refused.
func (p *Policy) Allowed(action string, roles []string) bool {
	e, ok := p.rules[action]
	return ok && e.eval(p.rules, roles, 0)
}

// expr is a parsed rule.
type expr interface {
	eval(rules map[string]expr, roles []string, depth int) bool
	check(rules map[string]expr, path []string) error
}

type (
	constExpr bool
	roleExpr  string
	ruleExpr  string
	notExpr   struct{ e expr }
	andExpr   []expr
	orExpr    []expr
)

func (c constExpr) eval(map[string]expr, []string, int) bool { return bool(c) }
func (r roleExpr) eval(_ map[string]expr, roles []string, _ int) bool {
	return slices.Contains(roles, string(r))
}
func (r ruleExpr) eval(rules map[string]expr, roles []string, depth int) bool {
	e, ok := rules[string(r)]
	return ok && depth < 32 && e.eval(rules, roles, depth+1)
}
func (n notExpr) eval(rules map[string]expr, roles []string, d int) bool {
	return !n.e.eval(rules, roles, d)
}
func (a andExpr) eval(rules map[string]expr, roles []string, d int) bool {
	for _, e := range a {
		if !e.eval(rules, roles, d) {
			return false
		}
	}
	return true
}
func (o orExpr) eval(rules map[string]expr, roles []string, d int) bool {
	for _, e := range o {
		if e.eval(rules, roles, d) {
			return true
		}
	}
	return false
}

func (constExpr) check(map[string]expr, []string) error { return nil }
func (roleExpr) check(map[string]expr, []string) error  { return nil }
func (r ruleExpr) check(rules map[string]expr, path []string) error {
	e, ok := rules[string(r)]
	if !ok {
		return fmt.Errorf("rule:%s names no rule", string(r))
	}
	if slices.Contains(path, string(r)) {
		return fmt.Errorf("rule:%s refers to itself (%s)", string(r), strings.Join(append(path, string(r)), " → "))
	}
	return e.check(rules, append(path, string(r)))
}
func (n notExpr) check(rules map[string]expr, path []string) error { return n.e.check(rules, path) }
func (a andExpr) check(rules map[string]expr, path []string) error { return checkAll(a, rules, path) }
func (o orExpr) check(rules map[string]expr, path []string) error  { return checkAll(o, rules, path) }

func checkAll(es []expr, rules map[string]expr, path []string) error {
	for _, e := range es {
		if err := e.check(rules, path); err != nil {
			return err
		}
	}
	return nil
}

// parseRule parses oslo.policy's rule language (without generic checks
// such as project_id:%(project_id)s: the API checks projects itself). An
// empty rule is @, as in oslo.policy.
func parseRule(s string) (expr, error) {
	// As oslo.policy does: words split on spaces, a word's leading "(" and
	// trailing ")" are tokens of their own.
	var toks []string
	for _, w := range strings.Fields(s) {
		for strings.HasPrefix(w, "(") {
			toks, w = append(toks, "("), w[1:]
		}
		closing := 0
		for strings.HasSuffix(w, ")") {
			closing, w = closing+1, w[:len(w)-1]
		}
		if w != "" {
			toks = append(toks, w)
		}
		for range closing {
			toks = append(toks, ")")
		}
	}
	if len(toks) == 0 {
		return constExpr(true), nil
	}
	ps := &ruleParser{toks: toks}
	e, err := ps.or()
	if err != nil {
		return nil, err
	}
	if ps.i != len(toks) {
		return nil, fmt.Errorf("unexpected %q", toks[ps.i])
	}
	return e, nil
}

type ruleParser struct {
	toks []string
	i    int
}

func (p *ruleParser) peek() string {
	if p.i < len(p.toks) {
		return p.toks[p.i]
	}
	return ""
}

func (p *ruleParser) or() (expr, error) {
	var out orExpr
	for {
		e, err := p.and()
		if err != nil {
			return nil, err
		}
		out = append(out, e)
		if p.peek() != "or" {
			break
		}
		p.i++
	}
	if len(out) == 1 {
		return out[0], nil
	}
	return out, nil
}

func (p *ruleParser) and() (expr, error) {
	var out andExpr
	for {
		e, err := p.unary()
		if err != nil {
			return nil, err
		}
		out = append(out, e)
		if p.peek() != "and" {
			break
		}
		p.i++
	}
	if len(out) == 1 {
		return out[0], nil
	}
	return out, nil
}

func (p *ruleParser) unary() (expr, error) {
	t := p.peek()
	p.i++
	switch {
	case t == "":
		return nil, errors.New("unexpected end of rule")
	case t == "not":
		e, err := p.unary()
		if err != nil {
			return nil, err
		}
		return notExpr{e}, nil
	case t == "(":
		e, err := p.or()
		if err != nil {
			return nil, err
		}
		if p.peek() != ")" {
			return nil, errors.New("missing )")
		}
		p.i++
		return e, nil
	case t == "@":
		return constExpr(true), nil
	case t == "!":
		return constExpr(false), nil
	case strings.HasPrefix(t, "role:") && len(t) > 5:
		return roleExpr(t[5:]), nil
	case strings.HasPrefix(t, "rule:") && len(t) > 5:
		return ruleExpr(t[5:]), nil
	}
	return nil, fmt.Errorf("unknown check %q (want role:NAME, rule:NAME, @, !, not, and, or, parentheses)", t)
}
