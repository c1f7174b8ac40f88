package lookup_test

import "mxid/lookup/slapdtest"

// The test directory (lookup/slapdtest, shared with main's check tests).
const (
	ldapBase   = slapdtest.Base
	ldapReader = slapdtest.Reader
	ldapPW     = slapdtest.ReaderPW
)

var (
	startSlapd    = slapdtest.Start
	startSlapdTLS = slapdtest.StartTLS
	person        = slapdtest.Person
)
