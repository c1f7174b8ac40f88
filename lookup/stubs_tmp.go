package lookup

import (
	"context"
	"log/slog"
	"net/http"
	"time"
)

type LDAP struct{}

func NewLDAP(cfg LDAPConfig, log *slog.Logger) (*LDAP, error) { return &LDAP{}, nil }
func (l *LDAP) Name() string                                  { return "ldap" }
func (l *LDAP) Lookup(ctx context.Context, tps []ThreePID) (map[ThreePID]string, error) {
	return nil, nil
}
func (l *LDAP) Records(fn func(medium, address, mxid string))                   {}
func (l *LDAP) Sync(ctx context.Context) (bool, int, error)                     { return false, 0, nil }
func (l *LDAP) Close()                                                          {}
func NewDNS(DNSConfig, string, *http.Client, []string, func() time.Time) Source { return nil }
func NewForwarders([]ForwarderConfig, *http.Client) Source                      { return nil }
