package pg

import (
	"reflect"
	"slices"
	"testing"

	"mxid/db"
	"mxid/db/storetest"
)

// TestSameMethodsAsBbolt keeps the two backends' method sets in step: every
// method of *db.Store exists on *Store with the same signature and the
// other way round, except those that only make sense on one of them, and
// storetest.Store lists exactly the common ones. A method added to db.Store
// fails here until it is added to the PostgreSQL store and the suite.
func TestSameMethodsAsBbolt(t *testing.T) {
	bboltOnly := []string{"WriteBackup", "ReleaseMapped", // pg_dump; no file mapped
		"Opened", "RewroteMeta", // the file's checks at open
		"ScrubFreePages"} // PostgreSQL: ForgetChanges; its files are its own
	pgOnly := []string{"ChangesSince", "LatestChange", "PruneChanges", "FollowChanges", "ForgetChanges", // the replicas' change log
		"Leadership",                                     // the leader's lock
		"Ping",                                           // readiness
		"SigningKey",                                     // bbolt: the signing.key file beside it
		"ChargeBudgets", "SweepBudgets", "ForgetBudgets", // bbolt: one process, budgets in its memory
		"CertPut", "CertLoad", "CertDelete", "CertList", "CertStat", "CertLock", "CertUnlock", // bbolt: data_dir/certmagic
	}
	methods := func(typ reflect.Type) map[string]reflect.Type {
		out := map[string]reflect.Type{}
		for i := range typ.NumMethod() {
			m := typ.Method(i)
			if typ.Kind() != reflect.Interface {
				m.Type = reflect.FuncOf(slices.Collect(m.Type.Ins())[1:], slices.Collect(m.Type.Outs()), m.Type.IsVariadic())
			}
			out[m.Name] = m.Type
		}
		return out
	}
	bbolt, pg := methods(reflect.TypeFor[*db.Store]()), methods(reflect.TypeFor[*Store]())
	contract := methods(reflect.TypeFor[storetest.Store]())
	for name, typ := range bbolt {
		if slices.Contains(bboltOnly, name) {
			continue
		}
		if pg[name] != typ {
			t.Errorf("db.Store.%s %v: PostgreSQL has %v", name, typ, pg[name])
		}
		if contract[name] != typ {
			t.Errorf("db.Store.%s %v: storetest.Store has %v", name, typ, contract[name])
		}
	}
	for name := range pg {
		if _, ok := bbolt[name]; !ok && !slices.Contains(pgOnly, name) {
			t.Errorf("pg.Store.%s is not on db.Store", name)
		}
	}
	for name := range contract {
		if _, ok := bbolt[name]; !ok {
			t.Errorf("storetest.Store.%s is not on db.Store", name)
		}
	}
}
