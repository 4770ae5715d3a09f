package scale

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/model"
)

// PromServer answers Prometheus' query API (/api/v1/query and
// /api/v1/query_range, GET or POST) from a World: each query is parsed and
// evaluated over the world's series (eval.go) and the result encoded as
// Prometheus 2.x encodes it (the same JSON, gzip when the client accepts
// it, as Prometheus' API does). Series come sorted by labels, as Prometheus
// sorts range results; it leaves an instant vector's order to its engine.
type PromServer struct {
	w *World
	// Now is the default evaluation time when a query has none.
	Now func() time.Time

	mu    sync.Mutex
	stats []QueryStat
	// replay, when set, answers a query it has answered before with the
	// same bytes, without evaluating it again (SetReplay).
	replay  bool
	answers map[string]answer

	srv *http.Server
	url string
}

// QueryStat is one answered query.
type QueryStat struct {
	Path      string
	Query     string
	Series    int
	JSONBytes int // the answer before compression
	WireBytes int // what was sent (gzip when the client asked for it)
	Eval      time.Duration
	Encode    time.Duration // JSON and gzip
	Err       string
	// Gzip says whether the client accepted a compressed answer.
	Gzip bool
}

type answer struct {
	body   []byte
	series int
}

// SetReplay makes the server remember every answer and serve a repeated
// query (same path and query text, whatever its evaluation time) from
// memory: a server that answers instantly, so a benchmark can time the
// client apart from this server's own evaluation. The world's counters
// rise at constant rates, so the same query later has the same answer
// but for its timestamps.
func (p *PromServer) SetReplay(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.replay = on
	if p.answers == nil {
		p.answers = map[string]answer{}
	}
}

// NewPromServer serves w.
func NewPromServer(w *World) *PromServer { return &PromServer{w: w, Now: time.Now} }

// Start listens on a loopback port.
func (p *PromServer) Start() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen for the synthetic Prometheus: %w", err)
	}
	p.url = "http://" + ln.Addr().String()
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	return nil
}

// URL is the base URL once started.
func (p *PromServer) URL() string { return p.url }

// Close stops the listener.
func (p *PromServer) Close() error {
	if p.srv == nil {
		return nil
	}
	return p.srv.Close()
}

// Stats returns the queries answered so far.
func (p *PromServer) Stats() []QueryStat {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]QueryStat(nil), p.stats...)
}

// ResetStats forgets the queries answered so far.
func (p *PromServer) ResetStats() {
	p.mu.Lock()
	p.stats = nil
	p.mu.Unlock()
}

func (p *PromServer) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		p.fail(rw, r, QueryStat{Path: r.URL.Path}, http.StatusBadRequest, "bad_data", err)
		return
	}
	st := QueryStat{Path: r.URL.Path, Query: r.Form.Get("query")}
	var (
		body []byte
		err  error
	)
	began := time.Now()
	key := r.URL.Path + "\x00" + st.Query
	p.mu.Lock()
	a, replayed := p.answers[key]
	replay := p.replay
	p.mu.Unlock()
	if replay && replayed {
		st.Series = a.series
		p.write(rw, r, a.body, &st)
		return
	}
	switch r.URL.Path {
	case "/api/v1/query":
		t := p.Now()
		if s := r.Form.Get("time"); s != "" {
			if t, err = parseTime(s); err != nil {
				p.fail(rw, r, st, http.StatusBadRequest, "bad_data", fmt.Errorf("invalid parameter \"time\": %w", err))
				return
			}
		}
		body, st.Series, err = p.instant(st.Query, t, &st)
	case "/api/v1/query_range":
		body, st.Series, err = p.rangeQuery(r, &st)
	case "/api/v1/status/buildinfo":
		body = []byte(`{"status":"success","data":{"version":"2.42.0","revision":"synthetic","branch":"","buildUser":"","buildDate":"","goVersion":""}}`)
	default:
		http.NotFound(rw, r)
		return
	}
	if err != nil {
		code, typ := http.StatusBadRequest, "bad_data"
		var ee *execError
		if asExec(err, &ee) {
			code, typ = http.StatusUnprocessableEntity, "execution"
		}
		p.fail(rw, r, st, code, typ, err)
		return
	}
	st.Eval = time.Since(began) - st.Encode
	if replay {
		p.mu.Lock()
		p.answers[key] = answer{body: body, series: st.Series}
		p.mu.Unlock()
	}
	p.write(rw, r, body, &st)
}

type execError struct{ err error }

func (e *execError) Error() string { return e.err.Error() }

func asExec(err error, target **execError) bool {
	e, ok := err.(*execError) //nolint:errorlint // only this package creates them, unwrapped
	if ok {
		*target = e
	}
	return ok
}

func (p *PromServer) fail(rw http.ResponseWriter, r *http.Request, st QueryStat, code int, typ string, err error) {
	st.Err = err.Error()
	body, _ := json.Marshal(map[string]string{"status": "error", "errorType": typ, "error": err.Error()})
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(code)
	_, _ = rw.Write(body)
	st.JSONBytes, st.WireBytes = len(body), len(body)
	p.record(st)
	_ = r
}

func (p *PromServer) record(st QueryStat) {
	p.mu.Lock()
	p.stats = append(p.stats, st)
	p.mu.Unlock()
}

func (p *PromServer) write(rw http.ResponseWriter, r *http.Request, body []byte, st *QueryStat) {
	began := time.Now()
	st.JSONBytes = len(body)
	rw.Header().Set("Content-Type", "application/json")
	if st.Gzip = strings.Contains(r.Header.Get("Accept-Encoding"), "gzip"); st.Gzip {
		var buf bytes.Buffer
		gz := gzip.NewWriter(&buf)
		_, _ = gz.Write(body)
		_ = gz.Close()
		body = buf.Bytes()
		rw.Header().Set("Content-Encoding", "gzip")
	}
	rw.Header().Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = rw.Write(body)
	st.WireBytes = len(body)
	st.Encode += time.Since(began)
	p.record(*st)
}

// parseTime reads a time as Prometheus' API does: seconds since the epoch
// (fractions allowed) or RFC 3339.
func parseTime(s string) (time.Time, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(math.Round(frac*1000))*int64(time.Millisecond)).UTC(), nil
	}
	return time.Parse(time.RFC3339Nano, s)
}

// parseStep reads a duration as Prometheus' API does: seconds or a
// Prometheus duration.
func parseStep(s string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := model.ParseDuration(s)
	return time.Duration(d), err
}

func (p *PromServer) instant(q string, t time.Time, st *QueryStat) ([]byte, int, error) {
	n, err := parseQuery(q)
	if err != nil {
		return nil, 0, err
	}
	t = t.Truncate(time.Millisecond)
	e := newEvaluator(p.w)
	v, err := e.eval(n, t)
	if err != nil {
		return nil, 0, &execError{err}
	}
	began := time.Now()
	defer func() { st.Encode += time.Since(began) }()
	buf := make([]byte, 0, 1<<16)
	buf = append(buf, `{"status":"success","data":{"resultType":`...)
	switch x := v.(type) {
	case scalar:
		buf = append(buf, `"scalar","result":`...)
		buf = appendPoint(buf, t.UnixMilli(), float64(x))
		return append(buf, "}}"...), 1, nil
	case strVal:
		buf = append(buf, `"string","result":[`...)
		buf = appendTimestamp(buf, t.UnixMilli())
		buf = append(buf, ',')
		buf = appendJSONString(buf, string(x))
		return append(buf, "]}}"...), 1, nil
	case vector:
		rows := make([][]labelPair, len(x))
		for k := range x {
			rows[k] = e.outputLabels(&x[k])
		}
		order := sortedOrder(rows)
		buf = append(buf, `"vector","result":[`...)
		for c, k := range order {
			if c > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, `{"metric":`...)
			buf = appendLabels(buf, rows[k])
			buf = append(buf, `,"value":`...)
			buf = appendPoint(buf, t.UnixMilli(), x[k].v)
			buf = append(buf, '}')
		}
		return append(buf, "]}}"...), len(x), nil
	}
	return nil, 0, &execError{fmt.Errorf("unexpected result %T", v)}
}

func (p *PromServer) rangeQuery(r *http.Request, st *QueryStat) ([]byte, int, error) {
	start, err := parseTime(r.Form.Get("start"))
	if err != nil {
		return nil, 0, fmt.Errorf("invalid parameter \"start\": %w", err)
	}
	end, err := parseTime(r.Form.Get("end"))
	if err != nil {
		return nil, 0, fmt.Errorf("invalid parameter \"end\": %w", err)
	}
	step, err := parseStep(r.Form.Get("step"))
	if err != nil || step <= 0 {
		return nil, 0, fmt.Errorf("invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer")
	}
	if end.Before(start) {
		return nil, 0, fmt.Errorf("invalid parameter \"end\": end timestamp must not be before start time")
	}
	if end.Sub(start)/step > 11000 {
		return nil, 0, fmt.Errorf("exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)")
	}
	n, err := parseQuery(st.Query)
	if err != nil {
		return nil, 0, err
	}
	e := newEvaluator(p.w)
	idx := map[string]*mseries{}
	var m matrix
	for t := start.Truncate(time.Millisecond); !t.After(end); t = t.Add(step) {
		v, err := e.eval(n, t)
		if err != nil {
			return nil, 0, &execError{err}
		}
		var vec vector
		switch x := v.(type) {
		case vector:
			vec = x
		case scalar:
			vec = vector{{v: float64(x)}}
		default:
			return nil, 0, &execError{fmt.Errorf("invalid expression type %q for range query, must be Scalar or instant Vector", typeName(v))}
		}
		for k := range vec {
			s := vec[k]
			key := e.signature(&s, true)
			ms := idx[key]
			if ms == nil {
				ms = &mseries{s: s}
				idx[key] = ms
				m = append(m, ms)
			}
			ms.pts = append(ms.pts, point{t.UnixMilli(), s.v})
		}
	}
	began := time.Now()
	defer func() { st.Encode += time.Since(began) }()
	rows := make([][]labelPair, len(m))
	for k, ms := range m {
		rows[k] = e.outputLabels(&ms.s)
	}
	buf := make([]byte, 0, 1<<16)
	buf = append(buf, `{"status":"success","data":{"resultType":"matrix","result":[`...)
	for c, k := range sortedOrder(rows) {
		if c > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, `{"metric":`...)
		buf = appendLabels(buf, rows[k])
		buf = append(buf, `,"values":[`...)
		for pi, pt := range m[k].pts {
			if pi > 0 {
				buf = append(buf, ',')
			}
			buf = appendPoint(buf, pt.t, pt.v)
		}
		buf = append(buf, "]}"...)
	}
	return append(buf, "]}}"...), len(m), nil
}

// outputLabels are a sample's labels as the answer shows them: __name__
// (when kept) first, then the rest by name.
func (e *evaluator) outputLabels(s *sample) []labelPair {
	e.explicit(s)
	if s.name == "" {
		return s.lbls
	}
	return append([]labelPair{{"__name__", s.name}}, s.lbls...)
}

func sortedOrder(rows [][]labelPair) []int {
	order := make([]int, len(rows))
	for k := range order {
		order[k] = k
	}
	sort.SliceStable(order, func(a, b int) bool { return compareLabels(rows[order[a]], rows[order[b]]) < 0 })
	return order
}

// compareLabels orders label sets as Prometheus' labels.Compare does.
func compareLabels(a, b []labelPair) int {
	for k := 0; k < len(a) && k < len(b); k++ {
		if c := strings.Compare(a[k].name, b[k].name); c != 0 {
			return c
		}
		if c := strings.Compare(a[k].value, b[k].value); c != 0 {
			return c
		}
	}
	return len(a) - len(b)
}

func appendLabels(buf []byte, l []labelPair) []byte {
	buf = append(buf, '{')
	for k, p := range l {
		if k > 0 {
			buf = append(buf, ',')
		}
		buf = appendJSONString(buf, p.name)
		buf = append(buf, ':')
		buf = appendJSONString(buf, p.value)
	}
	return append(buf, '}')
}

// appendPoint writes [seconds,"value"] as Prometheus' jsonutil does.
func appendPoint(buf []byte, ms int64, v float64) []byte {
	buf = append(buf, '[')
	buf = appendTimestamp(buf, ms)
	buf = append(buf, ',', '"')
	buf = formatFloat(buf, v)
	return append(buf, '"', ']')
}

// appendTimestamp writes milliseconds as seconds with up to three
// decimals, trailing zeros dropped only when the fraction is zero, as
// Prometheus' jsonutil.MarshalTimestamp does.
func appendTimestamp(buf []byte, ms int64) []byte {
	if ms < 0 {
		buf = append(buf, '-')
		ms = -ms
	}
	buf = strconv.AppendInt(buf, ms/1000, 10)
	if frac := ms % 1000; frac != 0 {
		buf = append(buf, '.')
		if frac < 100 {
			buf = append(buf, '0')
		}
		if frac < 10 {
			buf = append(buf, '0')
		}
		buf = strconv.AppendInt(buf, frac, 10)
	}
	return buf
}

// appendJSONString quotes s as encoding/json does (Prometheus' jsoniter is
// configured compatible with it, HTML escaping included).
func appendJSONString(buf []byte, s string) []byte {
	for k := 0; k < len(s); k++ {
		c := s[k]
		if c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(buf, q...)
		}
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
}
