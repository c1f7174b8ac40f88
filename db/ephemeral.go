package db

import bolt "go.etcd.io/bbolt"

// EphemeralKeyExists reports whether pub (unpadded URL-safe base64) is the
// ephemeral public key of a stored invite.
func (s *Store) EphemeralKeyExists(pub string) (bool, error) {
	found := false
	err := s.view(func(tx *bolt.Tx) error {
		found = tx.Bucket(bucketEphemeralKeys).Get([]byte(pub)) != nil
		return nil
	})
	return found, err
}
