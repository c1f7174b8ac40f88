module mxid

go 1.26.8

require (
	github.com/BurntSushi/toml v1.6.0
	github.com/go-ldap/ldap/v3 v3.4.15
	github.com/miekg/dns v1.1.73
	github.com/nyaruka/phonenumbers v1.8.1
	go.etcd.io/bbolt v1.5.0
	golang.org/x/net v0.62.0
	golang.org/x/text v0.43.0
	golang.org/x/time v0.16.0
)

require (
	github.com/Azure/go-ntlmssp v0.1.1 // indirect
	github.com/go-asn1-ber/asn1-ber v1.5.8 // indirect
	github.com/google/uuid v1.6.0 // indirect
	golang.org/x/crypto v0.58.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	google.golang.org/protobuf v1.36.11 // indirect
)
