package db

import "errors"

// ErrUnavailable is wrapped around errors that mean the database could not
// be reached or did not answer in time (a backend server down, a lost
// connection, a statement timeout): the operation may succeed when retried
// later. Callers test it with errors.Is (the HTTP side answers 503 with
// Retry-After). The bbolt store, a local file, never returns it.
var ErrUnavailable = errors.New("database unavailable")
