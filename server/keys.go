package server

import (
	"bytes"
	"net/http"

	"mxid/server/signing"
)

// maxPublicKeyParam bounds the public_key query parameter; an ed25519 key is
// 43 characters of base64.
const maxPublicKeyParam = 128

// getPubkey implements GET /_matrix/identity/v2/pubkey/{keyId}.
func (s *Server) getPubkey(w http.ResponseWriter, r *http.Request) error {
	if r.PathValue("keyId") != s.key.ID {
		return errorf(http.StatusNotFound, "M_NOT_FOUND", "The public key was not found")
	}
	writeJSON(w, http.StatusOK, map[string]string{"public_key": s.key.PublicBase64()})
	return nil
}

// decodePublicKeyParam decodes ?public_key= in any base64 form the spec
// allows; ok is false for anything that is not a 32-byte key.
func decodePublicKeyParam(r *http.Request) ([]byte, bool) {
	p := r.URL.Query().Get("public_key")
	if p == "" || len(p) > maxPublicKeyParam {
		return nil, false
	}
	b, err := signing.DecodeBase64(p)
	if err != nil || len(b) != 32 {
		return nil, false
	}
	return b, true
}

// getPubkeyIsValid implements GET /_matrix/identity/v2/pubkey/isvalid.
func (s *Server) getPubkeyIsValid(w http.ResponseWriter, r *http.Request) error {
	b, ok := decodePublicKeyParam(r)
	writeJSON(w, http.StatusOK, map[string]bool{"valid": ok && bytes.Equal(b, s.key.Public())})
	return nil
}

// getEphemeralPubkeyIsValid implements
// GET /_matrix/identity/v2/pubkey/ephemeral/isvalid: true for the ephemeral
// keys of stored invites.
func (s *Server) getEphemeralPubkeyIsValid(w http.ResponseWriter, r *http.Request) error {
	b, ok := decodePublicKeyParam(r)
	valid := false
	if ok {
		var err error
		valid, err = s.store.EphemeralKeyExists(signing.EncodeBase64URL(b))
		if err != nil {
			return errInternal(err)
		}
	}
	writeJSON(w, http.StatusOK, map[string]bool{"valid": valid})
	return nil
}
