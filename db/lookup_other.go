//go:build !linux

package db

// ReleaseMapped does nothing outside Linux.
func (s *Store) ReleaseMapped() error { return nil }

func (s *Store) releaseMapped() error { return nil }
