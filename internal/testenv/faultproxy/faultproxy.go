// Package faultproxy is an HTTP reverse proxy for tests that injects the
// faults an object store's clients meet: 500 and 503 answers with S3 XML
// error bodies, connections reset in the middle of a request or of a
// response, stalls longer than a client's timeout, response bodies cut short
// of their Content-Length, and request bodies trickled in slowly.
//
// Each request draws at most one fault from a seeded generator with the
// configured Rates, so a run is reproducible from its seed up to the order in
// which concurrent requests arrive. The proxy counts what it injected.
// Requests are passed on with their Host header unchanged, so signed
// requests (S3 SigV4) still verify at the upstream.
package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// Fault is one kind of injected fault.
type Fault string

// The faults the proxy injects.
const (
	// Err500 and Err503 answer without passing the request on.
	Err500 Fault = "500"
	Err503 Fault = "503"
	// ResetRequest reads part of the request body, then resets the connection
	// (the upstream never sees the request).
	ResetRequest Fault = "reset-request"
	// ResetResponse passes the request on (the upstream applies it), sends the
	// response headers and part of the body, then resets the connection.
	ResetResponse Fault = "reset-response"
	// Stall holds the request for Rates.StallFor (or until the client gives
	// up) before passing it on; StallBody sends the headers and part of the
	// body first, then holds the rest.
	Stall     Fault = "stall"
	StallBody Fault = "stall-body"
	// Truncate sends the upstream's headers (Content-Length included) and
	// only part of the body, then closes the connection cleanly.
	Truncate Fault = "truncate"
	// SlowUpload passes the request on with its body throttled to
	// Rates.SlowBytesPerSec.
	SlowUpload Fault = "slow-upload"
)

// Faults lists every fault, in the order Rates draws them.
var Faults = []Fault{Err500, Err503, ResetRequest, ResetResponse, Stall, StallBody, Truncate, SlowUpload}

// Rates says how likely each fault is per request. The probabilities add up
// to at most 1; the rest of the requests pass unharmed.
type Rates struct {
	P map[Fault]float64
	// StallFor is how long a stall holds a request (default 5s); make it
	// longer than the client's request timeout.
	StallFor time.Duration
	// SlowBytesPerSec is the throttled upload rate (default 256 KiB/s).
	SlowBytesPerSec int
}

// Uniform returns Rates where each fault in fs has probability p/len(fs).
func Uniform(p float64, fs ...Fault) Rates {
	if len(fs) == 0 {
		fs = Faults
	}
	r := Rates{P: map[Fault]float64{}}
	for _, f := range fs {
		r.P[f] = p / float64(len(fs))
	}
	return r
}

// Proxy is a running fault-injecting proxy. It is safe for concurrent use.
type Proxy struct {
	upstream *url.URL
	srv      *httptest.Server
	tr       *http.Transport

	mu       sync.Mutex
	rng      *rand.Rand
	rates    Rates
	on       bool
	counts   map[Fault]int
	requests int
}

// Start starts a proxy on a loopback port in front of upstream (a base URL
// such as http://127.0.0.1:7480), with faults off. The seed drives every
// random choice. Close stops it.
func Start(upstream string, seed uint64) (*Proxy, error) {
	u, err := url.Parse(upstream)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("faultproxy: upstream %q: not a base URL", upstream)
	}
	p := &Proxy{
		upstream: u,
		tr:       &http.Transport{MaxIdleConnsPerHost: 64, ResponseHeaderTimeout: 5 * time.Minute},
		rng:      rand.New(rand.NewPCG(seed, seed^0x2545f4914f6cdd1d)),
		counts:   map[Fault]int{},
	}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	return p, nil
}

// URL is the proxy's base URL, to use as the client's endpoint.
func (p *Proxy) URL() string { return p.srv.URL }

// Close stops the proxy and closes its connections, stalled ones included.
func (p *Proxy) Close() {
	p.srv.CloseClientConnections()
	p.srv.Close()
	p.tr.CloseIdleConnections()
}

// SetRates sets the fault rates and turns faults on.
func (p *Proxy) SetRates(r Rates) {
	if r.StallFor <= 0 {
		r.StallFor = 5 * time.Second
	}
	if r.SlowBytesPerSec <= 0 {
		r.SlowBytesPerSec = 256 << 10
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rates, p.on = r, true
}

// Off stops injecting faults: every later request passes unharmed.
func (p *Proxy) Off() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.on = false
}

// Counts returns how many of each fault were injected so far, and how many
// requests the proxy saw.
func (p *Proxy) Counts() (map[Fault]int, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[Fault]int, len(p.counts))
	for f, n := range p.counts {
		out[f] = n
	}
	return out, p.requests
}

// Injected returns the number of faults injected so far.
func (p *Proxy) Injected() int {
	c, _ := p.Counts()
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

// draw picks this request's fault ("" for none) and a fraction in [0.1, 0.9)
// that says where in a body the fault strikes.
func (p *Proxy) draw() (Fault, float64, Rates) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests++
	if !p.on {
		return "", 0, p.rates
	}
	x := p.rng.Float64()
	frac := 0.1 + 0.8*p.rng.Float64()
	for _, f := range Faults {
		x -= p.rates.P[f]
		if x < 0 {
			p.counts[f]++
			return f, frac, p.rates
		}
	}
	return "", 0, p.rates
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	fault, frac, rates := p.draw()
	switch fault {
	case Err500:
		writeS3Error(w, http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again.")
		return
	case Err503:
		writeS3Error(w, http.StatusServiceUnavailable, "ServiceUnavailable", "Please reduce your request rate.")
		return
	case ResetRequest:
		if r.ContentLength > 0 {
			_, _ = io.CopyN(io.Discard, r.Body, int64(float64(r.ContentLength)*frac))
		}
		reset(w)
		return
	case Stall:
		if !sleep(r.Context(), rates.StallFor) {
			return // the client gave up
		}
	case SlowUpload:
		r.Body = &slowReader{ctx: r.Context(), r: r.Body, perSec: rates.SlowBytesPerSec}
	}
	resp, err := p.forward(r)
	if err != nil {
		if r.Context().Err() == nil {
			writeS3Error(w, http.StatusBadGateway, "BadGateway", err.Error())
		}
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		if !hopByHop(k) {
			w.Header()[k] = vs
		}
	}
	cut := int64(-1) // where the body is cut short; -1: not
	switch fault {
	case ResetResponse, StallBody, Truncate:
		if resp.ContentLength > 0 {
			cut = int64(float64(resp.ContentLength) * frac)
		} else {
			cut = 0
		}
	}
	if cut >= 0 && resp.ContentLength >= 0 {
		// Keep the announced length even when the upstream has no body to
		// cut (a PUT's answer), so the client still sees a short response.
		w.Header().Set("Content-Length", strconv.FormatInt(max(resp.ContentLength, 1), 10))
	}
	w.WriteHeader(resp.StatusCode)
	if cut < 0 {
		_, _ = io.Copy(w, resp.Body)
		return
	}
	_, _ = io.CopyN(w, resp.Body, cut)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	switch fault {
	case ResetResponse:
		reset(w)
	case StallBody:
		sleep(r.Context(), rates.StallFor)
		reset(w)
	case Truncate:
		panic(http.ErrAbortHandler) // the server closes the connection, no more bytes
	}
}

// hopByHop reports whether header k belongs to one connection, not the message.
func hopByHop(k string) bool {
	switch http.CanonicalHeaderKey(k) {
	case "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// forward passes r on to the upstream with its Host header.
func (p *Proxy) forward(r *http.Request) (*http.Response, error) {
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.URL.Scheme = p.upstream.Scheme
	out.URL.Host = p.upstream.Host
	out.Host = r.Host
	if r.ContentLength == 0 {
		out.Body = nil
	}
	return p.tr.RoundTrip(out)
}

// writeS3Error answers as S3 does when it fails.
func writeS3Error(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("Connection", "close")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
		`<Error><Code>%s</Code><Message>%s</Message><RequestId>faultproxy</RequestId></Error>`, code, msg)
}

// reset closes the client's connection with a TCP reset (SO_LINGER 0).
func reset(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// slowReader reads at most perSec bytes a second.
type slowReader struct {
	ctx    context.Context
	r      io.Reader
	perSec int
}

func (s *slowReader) Read(b []byte) (int, error) {
	step := max(s.perSec/20, 1) // 50 ms worth
	if len(b) > step {
		b = b[:step]
	}
	if !sleep(s.ctx, 50*time.Millisecond) {
		return 0, errors.New("faultproxy: client gave up during a slow upload")
	}
	return s.r.Read(b)
}

// Close closes the underlying body if it can be closed.
func (s *slowReader) Close() error {
	if c, ok := s.r.(io.Closer); ok {
		return c.Close()
	}
	return nil
}
