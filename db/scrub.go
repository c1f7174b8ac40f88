package db

// Scrubbing free pages. bbolt never overwrites data in place: a write copies
// the pages it changes and frees the old ones, which keep their bytes until
// a later write reuses them. A removed binding, session or invite therefore
// stays readable in the file (and in every backup copied from it) for an
// unknown time. ScrubFreePages overwrites the free pages with zeros, so that
// after an erasure the address is nowhere in the file.
//
// Which pages are free is read from the free list page the last commit
// wrote (bbolt writes every free and pending page id there). A pending page
// may still be read by a transaction that began before it was freed, so the
// scrub runs only when no read transaction of this store is open: it takes
// the store's readers lock (every view holds it shared) without waiting,
// and is deferred when it cannot. Writers are held off by a write
// transaction around it, which it rolls back: the file's state is not
// changed, only the bytes of pages no transaction can reach.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	bolt "go.etcd.io/bbolt"
)

// ScrubReport is what ScrubFreePages did.
type ScrubReport struct {
	// Deferred says a read transaction was open: nothing was scrubbed;
	// try again later.
	Deferred bool `json:"deferred"`
	// FreePages counts the pages the free list names; Zeroed those that
	// held bytes and were overwritten.
	FreePages int `json:"free_pages"`
	Zeroed    int `json:"zeroed"`
}

// errScrubbed rolls back the scrub's write transaction.
var errScrubbed = errors.New("scrubbed")

// ScrubFreePages overwrites with zeros every free page of the file that is
// not zero yet (see above), and syncs the file. It is deferred when a read
// transaction is open.
func (s *Store) ScrubFreePages() (ScrubReport, error) {
	var r ScrubReport
	if !s.readers.TryLock() {
		r.Deferred = true
		return r, nil
	}
	defer s.readers.Unlock()
	err := s.update(func(tx *bolt.Tx) error {
		f, err := os.OpenFile(s.path, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := checkFile(s.path)
		if err != nil {
			return err
		}
		if st.meta.txid+1 != uint64(tx.ID()) {
			return fmt.Errorf("scrub: the file's meta page (transaction %d) is not the one this write began from (%d)", st.meta.txid, tx.ID()-1)
		}
		free, err := freeList(f, st.meta)
		if err != nil {
			return err
		}
		r.FreePages = len(free)
		page := make([]byte, st.meta.pageSize)
		zero := make([]byte, st.meta.pageSize)
		for _, id := range free {
			off := int64(id) * int64(st.meta.pageSize)
			if _, err := f.ReadAt(page, off); err != nil {
				return fmt.Errorf("scrub: page %d: %w", id, err)
			}
			if bytes.Equal(page, zero) {
				continue
			}
			if _, err := f.WriteAt(zero, off); err != nil {
				return fmt.Errorf("scrub: page %d: %w", id, err)
			}
			r.Zeroed++
		}
		if r.Zeroed > 0 {
			if err := f.Sync(); err != nil {
				return err
			}
		}
		return errScrubbed
	})
	if errors.Is(err, errScrubbed) {
		err = nil
	}
	return r, err
}

// freeList reads the page ids of the free list page of m (with its
// overflow pages). A file without one (written with bbolt's NoFreelistSync)
// cannot be scrubbed.
func freeList(f *os.File, m meta) ([]uint64, error) {
	if m.freelist == noFreelist {
		return nil, errors.New("scrub: the file keeps no free list")
	}
	ne := binary.NativeEndian
	hdr := make([]byte, pageHeaderSize)
	if _, err := f.ReadAt(hdr, int64(m.freelist)*int64(m.pageSize)); err != nil {
		return nil, fmt.Errorf("scrub: free list: %w", err)
	}
	if ne.Uint16(hdr[8:]) != freelistPageFlag || ne.Uint64(hdr[0:]) != m.freelist {
		return nil, fmt.Errorf("scrub: page %d is not the free list", m.freelist)
	}
	p := make([]byte, (int64(ne.Uint32(hdr[12:]))+1)*int64(m.pageSize))
	if _, err := f.ReadAt(p, int64(m.freelist)*int64(m.pageSize)); err != nil {
		return nil, fmt.Errorf("scrub: free list: %w", err)
	}
	first, count := uint64(0), uint64(ne.Uint16(p[10:]))
	if count == 0xFFFF { // the count is the first element
		first, count = 1, ne.Uint64(p[pageHeaderSize:])
	}
	if count > uint64(len(p)-pageHeaderSize)/8-first {
		return nil, fmt.Errorf("scrub: free list of %d ids does not fit its page", count)
	}
	out := make([]uint64, 0, count)
	for i := first; i < first+count; i++ {
		id := ne.Uint64(p[pageHeaderSize+8*i:])
		if id < 2 || id >= m.pgid || id == m.freelist {
			return nil, fmt.Errorf("scrub: the free list names page %d, which cannot be free", id)
		}
		out = append(out, id)
	}
	return out, nil
}
