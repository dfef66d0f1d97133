package cloud

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
)

// Error kinds. Every error this package returns for a failed OpenStack call
// is an *Error whose Kind is one of these, so that workflows can decide with
// errors.Is whether to retry.
var (
	// ErrNotFound: the resource does not exist (or is not visible to the
	// caller: Nova answers 404 for another project's server).
	ErrNotFound = errors.New("not found")
	// ErrConflict: the resource is in a state that forbids the request (409,
	// or Cinder's 400 "status must be available"); may succeed later.
	ErrConflict = errors.New("conflict")
	// ErrUnauthorized: the credentials are refused; re-authentication was
	// already tried once.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrForbidden: the caller's role does not allow the request.
	ErrForbidden = errors.New("forbidden")
	// ErrQuotaExceeded: a project quota would be exceeded (413, or Nova's 403
	// "Quota exceeded").
	ErrQuotaExceeded = errors.New("quota exceeded")
	// ErrUnavailable: the service did not answer or answered 5xx; retryable.
	ErrUnavailable = errors.New("service unavailable")
	// ErrBadRequest: the request was invalid; not retryable.
	ErrBadRequest = errors.New("bad request")
	// ErrFailed: an asynchronous operation ended in an error state (a
	// snapshot or volume in "error", a server in ERROR).
	ErrFailed = errors.New("operation failed")
	// ErrTimeout: waiting for a status took longer than allowed.
	ErrTimeout = errors.New("timed out")
)

// Error is a failed cloud operation: what was attempted, the kind of failure,
// the HTTP status if there was one, and the service's message.
type Error struct {
	Op     string // e.g. "create snapshot of volume 6c1…"
	Kind   error  // one of the Err* kinds above
	Status int    // HTTP status, 0 if none
	Msg    string // the service's message, if any
	Err    error  // the underlying error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	b.WriteString(": ")
	b.WriteString(e.Kind.Error())
	if e.Status != 0 {
		fmt.Fprintf(&b, " (HTTP %d)", e.Status)
	}
	if e.Msg != "" {
		b.WriteString(": ")
		b.WriteString(e.Msg)
	} else if e.Err != nil && e.Status == 0 {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap gives both the kind and the underlying error to errors.Is/As.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// Retryable reports whether an error of this package may succeed when the
// same request is made again later: unavailable services, state conflicts
// and timeouts are; not found, refused credentials, quota and bad requests
// are not.
func Retryable(err error) bool {
	return errors.Is(err, ErrUnavailable) || errors.Is(err, ErrConflict) || errors.Is(err, ErrTimeout)
}

// classify wraps err from gophercloud into an *Error naming op.
func classify(op string, err error) error {
	if err == nil {
		return nil
	}
	var ce *Error
	if errors.As(err, &ce) {
		return fmt.Errorf("%s: %w", op, err)
	}
	e := &Error{Op: op, Err: err}
	var ur gophercloud.ErrUnexpectedResponseCode
	var urp *gophercloud.ErrUnexpectedResponseCode
	var reauth *gophercloud.ErrUnableToReauthenticate
	switch {
	case errors.As(err, &reauth):
		// The token expired and the one re-authentication was refused.
		e.Status, e.Msg = http.StatusUnauthorized, "re-authentication failed"
		if errors.As(reauth.ErrReauth, &ur) {
			e.Msg += ": " + serviceMessage(ur.Body)
		}
	case errors.As(err, &ur):
		e.Status, e.Msg = ur.Actual, serviceMessage(ur.Body)
	case errors.As(err, &urp):
		e.Status, e.Msg = urp.Actual, serviceMessage(urp.Body)
	}
	low := strings.ToLower(e.Msg)
	var ne net.Error
	switch {
	case e.Status == http.StatusNotFound:
		e.Kind = ErrNotFound
	case e.Status == http.StatusConflict:
		e.Kind = ErrConflict
	case e.Status == http.StatusUnauthorized:
		e.Kind = ErrUnauthorized
	case e.Status == http.StatusRequestEntityTooLarge, strings.Contains(low, "quota exceeded"), strings.Contains(low, "exceeds allowed") && strings.Contains(low, "quota"):
		e.Kind = ErrQuotaExceeded
	case e.Status == http.StatusForbidden:
		e.Kind = ErrForbidden
	case e.Status == http.StatusBadRequest && (strings.Contains(low, "status must be") || strings.Contains(low, "while it is in")):
		// Cinder refuses a request on a volume or snapshot in the wrong
		// state with 400 ("Invalid volume: ... status must be available,
		// but current status is: in-use"): a state conflict.
		e.Kind = ErrConflict
	case e.Status == http.StatusBadRequest, e.Status == http.StatusNotAcceptable:
		e.Kind = ErrBadRequest
	case e.Status >= 500:
		e.Kind = ErrUnavailable
	case errors.As(err, &ne), errors.Is(err, net.ErrClosed), isConnRefused(err):
		e.Kind = ErrUnavailable
	default:
		if e.Status != 0 {
			e.Kind = ErrBadRequest
		} else {
			e.Kind = ErrUnavailable
		}
	}
	return e
}

func isConnRefused(err error) bool {
	s := err.Error()
	return strings.Contains(s, "connection refused") || strings.Contains(s, "connection reset") || strings.Contains(s, "EOF")
}

// serviceMessage digs the human message out of an OpenStack error body:
// {"itemNotFound": {"message": ...}}, {"error": {"message": ...}},
// {"NeutronError": {"message": ...}} or Heat's {"error": {"message": ...}}.
func serviceMessage(body []byte) string {
	var m map[string]any
	if json.Unmarshal(body, &m) != nil {
		return strings.TrimSpace(string(body))
	}
	if msg, ok := m["message"].(string); ok {
		return msg
	}
	for _, v := range m {
		if inner, ok := v.(map[string]any); ok {
			if msg, ok := inner["message"].(string); ok {
				return msg
			}
		}
	}
	return strings.TrimSpace(string(body))
}
