package server

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"mxid/db"
)

// Error is the one error type handlers return to the client: an HTTP status,
// a Matrix errcode and a client-safe message. Cause is logged, never sent.
// Extra adds keys to the JSON body (e.g. lookup_pepper, retry_after_ms).
type Error struct {
	Status  int
	Code    string
	Message string
	Extra   map[string]any
	Cause   error
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%d %s: %s: %v", e.Status, e.Code, e.Message, e.Cause)
	}
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Cause }

// body is the standard error response: errcode and error always present.
func (e *Error) body() map[string]any {
	m := make(map[string]any, 2+len(e.Extra))
	for k, v := range e.Extra {
		m[k] = v
	}
	m["errcode"] = e.Code
	m["error"] = e.Message
	return m
}

// errorf builds an Error with a formatted message.
func errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// withCause attaches a cause (for the log) to an Error.
func (e *Error) withCause(err error) *Error {
	e.Cause = err
	return e
}

// Errors used in many places.
func errUnrecognized() *Error {
	return errorf(http.StatusNotFound, "M_UNRECOGNIZED", "Unrecognized request")
}

func errMethod() *Error {
	return errorf(http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "Method not allowed for this endpoint")
}

func errUnauthorized(msg string) *Error {
	return errorf(http.StatusUnauthorized, "M_UNAUTHORIZED", "%s", msg)
}

func errMissing(field string) *Error {
	return errorf(http.StatusBadRequest, "M_MISSING_PARAMS", "Missing parameter: %s", field)
}

func errInvalid(field, why string) *Error {
	return errorf(http.StatusBadRequest, "M_INVALID_PARAM", "Invalid parameter %s: %s", field, why)
}

func errInternal(cause error) *Error {
	if errors.Is(cause, db.ErrUnavailable) {
		return errUnavailable(cause)
	}
	return (&Error{Status: http.StatusInternalServerError, Code: "M_UNKNOWN", Message: "Internal server error"}).withCause(cause)
}

// unavailableRetry is the Retry-After of a 503: about how long a database
// failover or restart takes.
const unavailableRetry = 5 * time.Second

// errUnavailable is 503 M_UNKNOWN with Retry-After: the database did not
// answer (PostgreSQL down, a statement past its timeout). Nothing was
// acknowledged, so the client may simply retry.
func errUnavailable(cause error) *Error {
	return (&Error{Status: http.StatusServiceUnavailable, Code: "M_UNKNOWN", Message: "The database is not available; try again in a few seconds",
		Extra: map[string]any{"retry_after_ms": unavailableRetry.Milliseconds()}}).withCause(cause)
}

// asError turns any error into an *Error; anything that is not one already
// becomes a 500 M_UNKNOWN whose text stays in the log.
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return errInternal(err)
}
