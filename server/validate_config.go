package server

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"mxid/server/matrixid"
)

// ValidationConfig is the [validation] section: rules for 3PID validation
// sessions.
type ValidationConfig struct {
	// NextLinkHosts, when not empty, are the only hosts a next_link may
	// point at (exact host names, compared case-insensitively).
	NextLinkHosts []string `toml:"next_link_hosts"`
}

// RateLimitConfig is the [ratelimit] section. Each limit is a token bucket;
// burst = 0 turns one off.
type RateLimitConfig struct {
	// RequestToken: messages sent by requestToken per account (v2) or per
	// client IP (v1), email and SMS together.
	RequestToken Rate `toml:"request_token"`
	// EmailAddress: verification emails per email address.
	EmailAddress Rate `toml:"email_address"`
	// MSISDNNumber: verification SMS per phone number.
	MSISDNNumber Rate `toml:"msisdn_number"`
	// MSISDNCountry: verification SMS per destination country.
	MSISDNCountry Rate `toml:"msisdn_country"`
	// Attempts: requestToken, submitToken, getValidated3pid, bind and
	// unbind calls per client IP, whether they send anything or not.
	Attempts Rate `toml:"attempts"`
	// Register: account/register calls per client IP (each makes mxid ask
	// a homeserver).
	Register Rate `toml:"register"`
	// TrustedCallers are the IPs or CIDRs of homeservers that call the v1
	// API for many users from one address (Dendrite; Synapse's SMS
	// delegation). Their v1 requests are budgeted per address, session and
	// invite sender instead of per IP, and their refused requests are
	// logged at info level.
	TrustedCallers []string `toml:"trusted_callers"`
}

// DefaultValidationConfig allows next_link to any http(s) host.
func DefaultValidationConfig() ValidationConfig { return ValidationConfig{} }

// DefaultRateLimitConfig has sydent's values where sydent has a limit
// (sender 5 per 5 minutes, number 5 per hour, country 50 then one a
// minute) and modest ones elsewhere.
func DefaultRateLimitConfig() RateLimitConfig {
	return RateLimitConfig{
		RequestToken:  Rate{Burst: 5, Every: 5 * time.Minute},
		EmailAddress:  Rate{Burst: 5, Every: time.Hour},
		MSISDNNumber:  Rate{Burst: 5, Every: time.Hour},
		MSISDNCountry: Rate{Burst: 50, Every: time.Minute},
		Attempts:      Rate{Burst: 60, Every: time.Second},
		Register:      Rate{Burst: 30, Every: 2 * time.Second},
	}
}

func (c *ValidationConfig) validate() []error {
	var errs []error
	for _, h := range c.NextLinkHosts {
		host, port, ok := matrixid.SplitServerName(h)
		if !ok || port != 0 || strings.HasPrefix(host, "[") || !matrixid.ValidServerName(host) {
			errs = append(errs, fmt.Errorf("validation.next_link_hosts: %q must be a host name like \"app.example.org\"", h))
		}
	}
	return errs
}

func (c *RateLimitConfig) validate() []error {
	var errs []error
	for name, r := range map[string]Rate{
		"request_token": c.RequestToken, "email_address": c.EmailAddress, "msisdn_number": c.MSISDNNumber,
		"msisdn_country": c.MSISDNCountry, "attempts": c.Attempts, "register": c.Register,
	} {
		if err := r.Validate("ratelimit." + name); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range c.TrustedCallers {
		if _, err := parsePrefixOrAddr(p); err != nil {
			errs = append(errs, fmt.Errorf("ratelimit.trusted_callers: %q is not an IP address or CIDR", p))
		}
	}
	return errs
}

// limits are the limits of [ratelimit]: budgets that protect others
// (Budgets, shared by replicas) and per-IP limiters (this replica's).
type limits struct {
	requestToken, emailAddress, msisdnNumber, msisdnCountry budget
	attempts, register                                      *limiter
	trustedCallers                                          []netip.Prefix
}

// newLimits builds the limiters of a validated [ratelimit] section.
func newLimits(c RateLimitConfig, now func() time.Time) *limits {
	l := &limits{
		requestToken:  budget{c.RequestToken, budgetRequestToken, "verification messages requested by this account or IP"},
		emailAddress:  budget{c.EmailAddress, budgetEmailAddress, "verification emails to this address"},
		msisdnNumber:  budget{c.MSISDNNumber, budgetMSISDNNumber, "verification SMS to this number"},
		msisdnCountry: budget{c.MSISDNCountry, "ratelimit.msisdn_country", "verification SMS to this country"},
		attempts:      newLimiter(c.Attempts, now, "ratelimit.attempts", "validation requests"),
		register:      newLimiter(c.Register, now, "ratelimit.register", "registrations from this IP"),
	}
	for _, p := range c.TrustedCallers {
		if pfx, err := parsePrefixOrAddr(p); err == nil {
			l.trustedCallers = append(l.trustedCallers, pfx)
		}
	}
	return l
}
