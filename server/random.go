package server

import (
	"crypto/rand"
	"math/big"
)

const (
	alphanumeric = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	digits       = "0123456789"
)

// randomString returns n characters drawn uniformly from alphabet with
// crypto/rand. Every secret and client-visible id comes from here.
func randomString(n int, alphabet string) string {
	max := big.NewInt(int64(len(alphabet)))
	b := make([]byte, n)
	for i := range b {
		x, err := rand.Int(rand.Reader, max)
		if err != nil {
			panic("crypto/rand failed: " + err.Error()) // the OS has no randomness left to give; nothing is safe after this
		}
		b[i] = alphabet[x.Int64()]
	}
	return string(b)
}
