package pricebook

import "io"

// ioLimit reads at most one byte past BookBytesMax, so an oversize file is detected without
// reading it whole.
func ioLimit(r io.Reader) io.Reader { return io.LimitReader(r, BookBytesMax+1) }
