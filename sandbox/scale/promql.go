package scale

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/prometheus/common/model"
)

// The PromQL the synthetic Prometheus understands: number and string
// literals, vector selectors (with =, !=, =~, !~ matchers and offset),
// range selectors, subqueries [range:step], the functions in evalCall,
// the aggregations sum, count, min, max and avg with by or without,
// the set operators or, and, unless, comparisons (with bool) and arithmetic
// between a vector and a scalar or two scalars. Anything else is a parse
// or evaluation error, answered as Prometheus answers bad_data: a query the
// product starts to send that this package does not implement fails
// loudly instead of being answered wrongly.

// node is a parsed expression.
type node interface{}

type (
	numberLit struct{ v float64 }
	stringLit struct{ s string }
	vectorSel struct {
		name     string
		matchers []matcher
		offset   time.Duration
	}
	matrixSel struct {
		sel *vectorSel
		rng time.Duration
	}
	subqueryExpr struct {
		expr      node
		rng, step time.Duration
		offset    time.Duration
	}
	callExpr struct {
		fn   string
		args []node
	}
	aggExpr struct {
		op      string
		by      []string
		without bool
		expr    node
	}
	binaryExpr struct {
		op         string
		lhs, rhs   node
		returnBool bool
	}
	unaryMinus struct{ expr node }
)

type matcher struct {
	name, op, value string
	re              *regexp.Regexp
}

func (m *matcher) matches(v string) bool {
	switch m.op {
	case "=":
		return v == m.value
	case "!=":
		return v != m.value
	case "=~":
		return m.re.MatchString(v)
	case "!~":
		return !m.re.MatchString(v)
	}
	return false
}

type tokKind int

const (
	tEOF tokKind = iota
	tIdent
	tNumber
	tString
	tDuration
	tPunct
)

type token struct {
	kind tokKind
	text string
	pos  int
}

// lex splits a PromQL expression into tokens. Durations are lexed inside
// brackets only, where PromQL allows nothing else.
func lex(q string) ([]token, error) {
	var toks []token
	inBracket := false
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '#':
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case inBracket && (c >= '0' && c <= '9'):
			j := i
			for j < len(q) && (isAlnum(q[j])) {
				j++
			}
			toks = append(toks, token{tDuration, q[i:j], i})
			i = j
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			for j < len(q) && q[j] != c {
				if q[j] == '\\' && c != '`' {
					j++
				}
				j++
			}
			if j >= len(q) {
				return nil, fmt.Errorf("1:%d: parse error: unterminated quoted string", i+1)
			}
			raw := q[i : j+1]
			var s string
			var err error
			switch c {
			case '`':
				s = raw[1 : len(raw)-1]
			case '\'':
				s, err = strconv.Unquote(`"` + strings.ReplaceAll(strings.ReplaceAll(raw[1:len(raw)-1], `\'`, `'`), `"`, `\"`) + `"`)
			default:
				s, err = strconv.Unquote(raw)
			}
			if err != nil {
				return nil, fmt.Errorf("1:%d: parse error: invalid string %s: %w", i+1, raw, err)
			}
			toks = append(toks, token{tString, s, i})
			i = j + 1
		case c >= '0' && c <= '9' || (c == '.' && i+1 < len(q) && q[i+1] >= '0' && q[i+1] <= '9'):
			j := i
			for j < len(q) && (isAlnum(q[j]) || q[j] == '.' || ((q[j] == '+' || q[j] == '-') && (q[j-1] == 'e' || q[j-1] == 'E'))) {
				j++
			}
			toks = append(toks, token{tNumber, q[i:j], i})
			i = j
		case c == '_' || (c == ':' && !inBracket) || unicode.IsLetter(rune(c)):
			j := i
			for j < len(q) && (isAlnum(q[j]) || q[j] == '_' || q[j] == ':') {
				j++
			}
			toks = append(toks, token{tIdent, q[i:j], i})
			i = j
		default:
			two := ""
			if i+1 < len(q) {
				two = q[i : i+2]
			}
			switch two {
			case "!=", "=~", "!~", ">=", "<=", "==":
				toks = append(toks, token{tPunct, two, i})
				i += 2
				continue
			}
			if !strings.ContainsRune("(){}[],:=<>+-*/%^", rune(c)) {
				return nil, fmt.Errorf("1:%d: parse error: unexpected character %q", i+1, c)
			}
			switch c {
			case '[':
				inBracket = true
			case ']':
				inBracket = false
			}
			toks = append(toks, token{tPunct, string(c), i})
			i++
		}
	}
	return append(toks, token{tEOF, "", len(q)}), nil
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
}

type parser struct {
	toks []token
	i    int
}

// parseQuery parses a PromQL expression.
func parseQuery(q string) (node, error) {
	toks, err := lex(q)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	n, err := p.expr(0)
	if err != nil {
		return nil, err
	}
	if t := p.peek(); t.kind != tEOF {
		return nil, p.errorf(t, "unexpected %q", t.text)
	}
	return n, nil
}

func (p *parser) peek() token { return p.toks[p.i] }
func (p *parser) next() token {
	t := p.toks[p.i]
	if t.kind != tEOF {
		p.i++
	}
	return t
}

func (p *parser) errorf(t token, format string, args ...any) error {
	return fmt.Errorf("1:%d: parse error: %s", t.pos+1, fmt.Sprintf(format, args...))
}

func (p *parser) expect(text string) error {
	if t := p.next(); t.text != text || (t.kind != tPunct && t.kind != tIdent) {
		return p.errorf(t, "expected %q, got %q", text, t.text)
	}
	return nil
}

// Binary operator precedence, lowest first (PromQL's: or; and unless;
// comparisons; + -; * / %; ^).
func precedence(t token) int {
	switch t.kind {
	case tIdent:
		switch strings.ToLower(t.text) {
		case "or":
			return 1
		case "and", "unless":
			return 2
		}
	case tPunct:
		switch t.text {
		case "==", "!=", "<", ">", "<=", ">=":
			return 3
		case "+", "-":
			return 4
		case "*", "/", "%":
			return 5
		case "^":
			return 6
		}
	}
	return 0
}

func (p *parser) expr(minPrec int) (node, error) {
	lhs, err := p.unary()
	if err != nil {
		return nil, err
	}
	for {
		t := p.peek()
		prec := precedence(t)
		if prec == 0 || prec <= minPrec {
			return lhs, nil
		}
		p.next()
		b := &binaryExpr{op: strings.ToLower(t.text), lhs: lhs}
		if n := p.peek(); n.kind == tIdent && n.text == "bool" {
			p.next()
			b.returnBool = true
		}
		if n := p.peek(); n.kind == tIdent {
			switch n.text {
			case "on", "ignoring", "group_left", "group_right":
				return nil, p.errorf(n, "vector matching with %s is not supported by the synthetic Prometheus", n.text)
			}
		}
		next := prec
		if t.text == "^" {
			next = prec - 1 // right-associative
		}
		if b.rhs, err = p.expr(next); err != nil {
			return nil, err
		}
		lhs = b
	}
}

func (p *parser) unary() (node, error) {
	if t := p.peek(); t.kind == tPunct && (t.text == "-" || t.text == "+") {
		p.next()
		e, err := p.unary()
		if err != nil {
			return nil, err
		}
		if t.text == "-" {
			return &unaryMinus{e}, nil
		}
		return e, nil
	}
	e, err := p.primary()
	if err != nil {
		return nil, err
	}
	return p.postfix(e)
}

// postfix parses range selectors, subqueries and offsets after a primary.
func (p *parser) postfix(e node) (node, error) {
	for {
		t := p.peek()
		switch {
		case t.kind == tPunct && t.text == "[":
			p.next()
			rng, err := p.duration()
			if err != nil {
				return nil, err
			}
			if n := p.peek(); n.kind == tPunct && n.text == ":" {
				p.next()
				var step time.Duration
				if n := p.peek(); n.kind == tDuration {
					if step, err = p.duration(); err != nil {
						return nil, err
					}
				} else {
					return nil, p.errorf(n, "a subquery without a step is not supported by the synthetic Prometheus")
				}
				if err := p.expect("]"); err != nil {
					return nil, err
				}
				e = &subqueryExpr{expr: e, rng: rng, step: step}
				continue
			}
			if err := p.expect("]"); err != nil {
				return nil, err
			}
			vs, ok := e.(*vectorSel)
			if !ok {
				return nil, p.errorf(t, "ranges only allowed for vector selectors")
			}
			e = &matrixSel{sel: vs, rng: rng}
		case t.kind == tIdent && t.text == "offset":
			p.next()
			neg := false
			if n := p.peek(); n.kind == tPunct && n.text == "-" {
				p.next()
				neg = true
			}
			// The duration after offset is outside brackets: lexed as a number.
			n := p.next()
			d, err := model.ParseDuration(n.text)
			if err != nil {
				return nil, p.errorf(n, "bad offset %q", n.text)
			}
			off := time.Duration(d)
			if neg {
				off = -off
			}
			switch x := e.(type) {
			case *vectorSel:
				x.offset = off
			case *matrixSel:
				x.sel.offset = off
			case *subqueryExpr:
				x.offset = off
			default:
				return nil, p.errorf(n, "offset modifier must be preceded by a selector or subquery")
			}
		default:
			return e, nil
		}
	}
}

func (p *parser) duration() (time.Duration, error) {
	t := p.next()
	if t.kind != tDuration {
		return 0, p.errorf(t, "expected a duration, got %q", t.text)
	}
	d, err := model.ParseDuration(t.text)
	if err != nil {
		return 0, p.errorf(t, "bad duration %q", t.text)
	}
	return time.Duration(d), nil
}

var aggregations = map[string]bool{"sum": true, "count": true, "group": true, "min": true, "max": true, "avg": true}

func (p *parser) primary() (node, error) {
	t := p.next()
	switch t.kind {
	case tNumber:
		v, err := strconv.ParseFloat(t.text, 64)
		if err != nil {
			if d, derr := model.ParseDuration(t.text); derr == nil {
				return &numberLit{time.Duration(d).Seconds()}, nil
			}
			return nil, p.errorf(t, "bad number %q", t.text)
		}
		return &numberLit{v}, nil
	case tString:
		return &stringLit{t.text}, nil
	case tPunct:
		switch t.text {
		case "(":
			e, err := p.expr(0)
			if err != nil {
				return nil, err
			}
			if err := p.expect(")"); err != nil {
				return nil, err
			}
			return e, nil
		case "{":
			p.i--
			return p.selector("")
		}
	case tIdent:
		lower := strings.ToLower(t.text)
		switch lower {
		case "inf", "+inf":
			return &numberLit{inf(1)}, nil
		case "nan":
			return &numberLit{nan()}, nil
		}
		if aggregations[lower] {
			return p.aggregation(lower)
		}
		if n := p.peek(); n.kind == tPunct && n.text == "(" {
			return p.call(t.text)
		}
		return p.selector(t.text)
	}
	return nil, p.errorf(t, "unexpected %q", t.text)
}

func (p *parser) aggregation(op string) (node, error) {
	a := &aggExpr{op: op}
	grouping := func() error {
		t := p.peek()
		if t.kind != tIdent || (t.text != "by" && t.text != "without") {
			return nil
		}
		p.next()
		a.without = t.text == "without"
		labels, err := p.labelList()
		a.by = labels
		return err
	}
	if err := grouping(); err != nil {
		return nil, err
	}
	if err := p.expect("("); err != nil {
		return nil, err
	}
	e, err := p.expr(0)
	if err != nil {
		return nil, err
	}
	if t := p.peek(); t.kind == tPunct && t.text == "," {
		return nil, p.errorf(t, "aggregation parameters are not supported by the synthetic Prometheus")
	}
	if err := p.expect(")"); err != nil {
		return nil, err
	}
	a.expr = e
	if err := grouping(); err != nil {
		return nil, err
	}
	return a, nil
}

func (p *parser) labelList() ([]string, error) {
	if err := p.expect("("); err != nil {
		return nil, err
	}
	var out []string
	for {
		t := p.next()
		if t.kind == tPunct && t.text == ")" {
			return out, nil
		}
		if t.kind != tIdent {
			return nil, p.errorf(t, "expected a label name, got %q", t.text)
		}
		out = append(out, t.text)
		if n := p.peek(); n.kind == tPunct && n.text == "," {
			p.next()
		}
	}
}

func (p *parser) call(fn string) (node, error) {
	if err := p.expect("("); err != nil {
		return nil, err
	}
	c := &callExpr{fn: fn}
	if t := p.peek(); t.kind == tPunct && t.text == ")" {
		p.next()
		return c, nil
	}
	for {
		e, err := p.expr(0)
		if err != nil {
			return nil, err
		}
		c.args = append(c.args, e)
		t := p.next()
		if t.kind == tPunct && t.text == ")" {
			return c, nil
		}
		if t.kind != tPunct || t.text != "," {
			return nil, p.errorf(t, "expected \",\" or \")\" in the arguments of %s, got %q", fn, t.text)
		}
	}
}

func (p *parser) selector(name string) (node, error) {
	vs := &vectorSel{name: name}
	if t := p.peek(); t.kind == tPunct && t.text == "{" {
		p.next()
		for {
			t := p.next()
			if t.kind == tPunct && t.text == "}" {
				break
			}
			if t.kind != tIdent {
				return nil, p.errorf(t, "expected a label name, got %q", t.text)
			}
			op := p.next()
			if op.kind != tPunct || (op.text != "=" && op.text != "!=" && op.text != "=~" && op.text != "!~") {
				return nil, p.errorf(op, "expected a label matching operator, got %q", op.text)
			}
			val := p.next()
			if val.kind != tString {
				return nil, p.errorf(val, "expected a string, got %q", val.text)
			}
			m := matcher{name: t.text, op: op.text, value: val.text}
			if op.text == "=~" || op.text == "!~" {
				re, err := regexp.Compile("^(?:" + val.text + ")$")
				if err != nil {
					return nil, p.errorf(val, "bad regex %q: %v", val.text, err)
				}
				m.re = re
			}
			if m.name == "__name__" && m.op == "=" {
				if vs.name != "" {
					return nil, p.errorf(t, "metric name set twice")
				}
				vs.name = m.value
			} else {
				vs.matchers = append(vs.matchers, m)
			}
			if n := p.peek(); n.kind == tPunct && n.text == "," {
				p.next()
			}
		}
	}
	if vs.name == "" {
		return nil, fmt.Errorf("parse error: a selector without a metric name is not supported by the synthetic Prometheus")
	}
	return vs, nil
}
