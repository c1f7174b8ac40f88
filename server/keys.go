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

// publicKeyParam decodes ?public_key= in any base64 form the spec allows.
// A missing parameter is 400 M_MISSING_PARAMS; ok is false for anything that
// is not a 32-byte key (an answer of valid: false).
func publicKeyParam(r *http.Request) (key []byte, ok bool, err error) {
	q := r.URL.Query()
	if !q.Has("public_key") {
		return nil, false, errMissing("public_key")
	}
	p := q.Get("public_key")
	if p == "" || len(p) > maxPublicKeyParam {
		return nil, false, nil
	}
	b, derr := signing.DecodeBase64(p)
	if derr != nil || len(b) != 32 {
		return nil, false, nil
	}
	return b, true, nil
}

// getPubkeyIsValid implements GET /_matrix/identity/v2/pubkey/isvalid.
func (s *Server) getPubkeyIsValid(w http.ResponseWriter, r *http.Request) error {
	b, ok, err := publicKeyParam(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]bool{"valid": ok && bytes.Equal(b, s.key.Public())})
	return nil
}

// getEphemeralPubkeyIsValid implements
// GET /_matrix/identity/v2/pubkey/ephemeral/isvalid: true for the ephemeral
// keys of stored invites.
func (s *Server) getEphemeralPubkeyIsValid(w http.ResponseWriter, r *http.Request) error {
	b, ok, err := publicKeyParam(r)
	if err != nil {
		return err
	}
	valid := false
	if ok {
		valid, err = s.store.EphemeralKeyExists(signing.EncodeBase64URL(b))
		if err != nil {
			return errInternal(err)
		}
	}
	writeJSON(w, http.StatusOK, map[string]bool{"valid": valid})
	return nil
}
