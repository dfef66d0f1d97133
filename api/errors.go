package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// Error is an API error: the HTTP status and the message the caller reads.
// Its message never holds a token or a password.
type Error struct {
	Status  int
	Message string
	// Err is the cause, logged but not shown to the caller.
	Err error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%d %s: %v", e.Status, e.Message, e.Err)
	}
	return fmt.Sprintf("%d %s", e.Status, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

func errorf(status int, format string, a ...any) *Error {
	return &Error{Status: status, Message: fmt.Sprintf(format, a...)}
}

// msgUnauthorized is the one message of every 401: it says nothing of why
// (unknown, forged, expired or unscoped token), as Keystone says nothing.
const msgUnauthorized = "The request you have made requires authentication."

func unauthorized(cause error) *Error {
	return &Error{Status: http.StatusUnauthorized, Message: msgUnauthorized, Err: cause}
}

// ErrorBody is the OpenStack-style error body (Keystone's, Glance's).
type ErrorBody struct {
	Error struct {
		Code    int    `json:"code"`
		Title   string `json:"title"`
		Message string `json:"message"`
	} `json:"error"`
}

// writeError answers err as an OpenStack-style error body; an error that is
// not an *Error is a 500 whose cause is logged, not shown.
func writeError(w http.ResponseWriter, err error) {
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Status: http.StatusInternalServerError, Message: "The server has either erred or is incapable of performing the requested operation.", Err: err}
	}
	var body ErrorBody
	body.Error.Code, body.Error.Title, body.Error.Message = e.Status, http.StatusText(e.Status), e.Message
	writeJSON(w, e.Status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if v != nil {
		_ = json.NewEncoder(w).Encode(v)
	}
}

// decodeBody reads a JSON request body of at most 1 MiB into v; unknown
// fields are refused (a tenant's hooks among them), naming the field.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errorf(http.StatusBadRequest, "Malformed request body: %v", err)
	}
	if dec.More() {
		return errorf(http.StatusBadRequest, "Malformed request body: more than one JSON value")
	}
	return nil
}
