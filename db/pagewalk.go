package db

// The bounds walk. bbolt's consistency check runs on a goroutine of its own
// and reads pages through the memory map: a page whose header survived but
// whose offsets are garbage (a damaged sector inside a page) sends it
// outside the file, and a memory fault there ends the process, which no
// recover can prevent; a child pointer back up the tree sends it round for
// ever. So before bbolt's check, every page reachable from the valid meta
// page is read from the file (ReadAt, never the map) and each offset, size
// and page id it holds is checked against the page and the high-water mark,
// each page reached once. The layout is bbolt's (go.etcd.io/bbolt/internal/
// common, native byte order).

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

const (
	branchPageFlag   = 0x01
	leafPageFlag     = 0x02
	freelistPageFlag = 0x10
	bucketLeafFlag   = 0x01
	elementSize      = 16 // branch {pos, ksize uint32; pgid uint64}, leaf {flags, pos, ksize, vsize uint32}
	bucketHeaderSize = 16 // {root pgid, sequence uint64}
	maxTreeDepth     = 64
)

// pageWalker reads pages of one file and remembers which it has met.
type pageWalker struct {
	f        io.ReaderAt
	pageSize int64
	hwm      uint64
	seen     []uint64 // bitset by page id
	bufs     [][]byte // one page buffer per tree depth, reused
}

// walkPages checks the tree under the meta page m of the file at path.
func walkPages(path string, m meta) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := &pageWalker{f: f, pageSize: int64(m.pageSize), hwm: m.pgid, seen: make([]uint64, (m.pgid+63)/64), bufs: make([][]byte, maxTreeDepth+1)}
	if m.freelist != noFreelist {
		if err := w.freelist(m.freelist); err != nil {
			return err
		}
	}
	return w.tree(m.root, 0)
}

// read reads page id with its overflow pages into the buffer of depth,
// once per walk.
func (w *pageWalker) read(id uint64, depth int) ([]byte, error) {
	if id < 2 || id >= w.hwm {
		return nil, fmt.Errorf("page %d: out of bounds (high-water mark %d)", id, w.hwm)
	}
	if w.seen[id/64]&(1<<(id%64)) != 0 {
		return nil, fmt.Errorf("page %d: reached twice", id)
	}
	p := w.bufs[depth]
	if int64(len(p)) < w.pageSize {
		p = make([]byte, w.pageSize)
	}
	p = p[:w.pageSize]
	if _, err := w.f.ReadAt(p, int64(id)*w.pageSize); err != nil {
		return nil, fmt.Errorf("page %d: %v", id, err)
	}
	ne := binary.NativeEndian
	overflow := uint64(ne.Uint32(p[12:]))
	if got := ne.Uint64(p[0:]); got != id {
		return nil, fmt.Errorf("page %d: identifies as page %d", id, got)
	}
	if id+overflow >= w.hwm {
		return nil, fmt.Errorf("page %d: %d overflow pages run past the high-water mark %d", id, overflow, w.hwm)
	}
	for i := id; i <= id+overflow; i++ {
		w.seen[i/64] |= 1 << (i % 64)
	}
	if overflow > 0 {
		size := int64(overflow+1) * w.pageSize
		if int64(cap(p)) < size {
			p = append(p[:cap(p)], make([]byte, size-int64(cap(p)))...)
		}
		p = p[:size]
		if _, err := w.f.ReadAt(p[w.pageSize:], int64(id+1)*w.pageSize); err != nil {
			return nil, fmt.Errorf("page %d: %v", id, err)
		}
	}
	w.bufs[depth] = p
	return p, nil
}

// freelist checks the free list page: its count and ids.
func (w *pageWalker) freelist(id uint64) error {
	p, err := w.read(id, 0)
	if err != nil {
		return fmt.Errorf("free list: %w", err)
	}
	ne := binary.NativeEndian
	if flags := ne.Uint16(p[8:]); flags != freelistPageFlag {
		return fmt.Errorf("page %d: the free list page has type %#x", id, flags)
	}
	first, count := uint64(0), uint64(ne.Uint16(p[10:]))
	if count == 0xFFFF { // the count is the first element
		if len(p) < pageHeaderSize+8 {
			return fmt.Errorf("page %d: free list too short", id)
		}
		first, count = 1, ne.Uint64(p[pageHeaderSize:])
	}
	if count > uint64(len(p)-pageHeaderSize)/8-first {
		return fmt.Errorf("page %d: free list of %d ids does not fit its page", id, count)
	}
	for i := first; i < first+count; i++ {
		if free := ne.Uint64(p[pageHeaderSize+8*i:]); free < 2 || free >= w.hwm {
			return fmt.Errorf("page %d: free list names page %d, out of bounds", id, free)
		}
	}
	return nil
}

// tree checks the page id of a bucket and everything under it.
func (w *pageWalker) tree(id uint64, depth int) error {
	if depth > maxTreeDepth {
		return fmt.Errorf("page %d: more than %d levels deep", id, maxTreeDepth)
	}
	p, err := w.read(id, depth)
	if err != nil {
		return err
	}
	return w.node(id, p, depth)
}

// node checks one branch or leaf page p (a page of the file, or an inline
// bucket's page inside a value) and descends.
func (w *pageWalker) node(id uint64, p []byte, depth int) error {
	ne := binary.NativeEndian
	if len(p) < pageHeaderSize {
		return fmt.Errorf("page %d: an inline bucket too short for its page header", id)
	}
	flags, count := ne.Uint16(p[8:]), int(ne.Uint16(p[10:]))
	if flags != branchPageFlag && flags != leafPageFlag {
		return fmt.Errorf("page %d: has type %#x, not a branch or leaf page", id, flags)
	}
	if pageHeaderSize+count*elementSize > len(p) {
		return fmt.Errorf("page %d: %d elements do not fit the page", id, count)
	}
	for i := range count {
		at := pageHeaderSize + i*elementSize
		e := p[at : at+elementSize]
		switch flags {
		case branchPageFlag:
			pos, ksize := uint64(ne.Uint32(e[0:])), uint64(ne.Uint32(e[4:]))
			if uint64(at)+pos+ksize > uint64(len(p)) {
				return fmt.Errorf("page %d: key %d lies outside the page", id, i)
			}
			if err := w.tree(ne.Uint64(e[8:]), depth+1); err != nil {
				return err
			}
		case leafPageFlag:
			eflags, pos, ksize, vsize := ne.Uint32(e[0:]), uint64(ne.Uint32(e[4:])), uint64(ne.Uint32(e[8:])), uint64(ne.Uint32(e[12:]))
			end := uint64(at) + pos + ksize + vsize
			if end > uint64(len(p)) {
				return fmt.Errorf("page %d: key/value %d lies outside the page", id, i)
			}
			if eflags&bucketLeafFlag == 0 {
				continue
			}
			v := p[end-vsize : end]
			if len(v) < bucketHeaderSize {
				return fmt.Errorf("page %d: bucket %d has a short header", id, i)
			}
			if root := ne.Uint64(v); root != 0 {
				if err := w.tree(root, depth+1); err != nil {
					return err
				}
			} else if err := w.node(id, v[bucketHeaderSize:], depth+1); err != nil { // inline bucket
				return err
			}
		}
	}
	return nil
}
