package state

import "encoding/binary"

// The commit script takes each chunk of agents as one MessagePack argument,
// which the script's cmsgpack library unpacks in C: one argument per chunk
// instead of a dozen per agent saves the client boxing every value and the
// server building an object and a Lua string for each. Only what the commit
// sends is written: arrays, strings and unsigned integers.

func mpArray(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x90|byte(n))
	case n < 1<<16:
		return binary.BigEndian.AppendUint16(append(b, 0xdc), uint16(n))
	default:
		return binary.BigEndian.AppendUint32(append(b, 0xdd), uint32(n))
	}
}

func mpStrHeader(b []byte, n int) []byte {
	switch {
	case n < 32:
		return append(b, 0xa0|byte(n))
	case n < 1<<8:
		return append(b, 0xd9, byte(n))
	case n < 1<<16:
		return binary.BigEndian.AppendUint16(append(b, 0xda), uint16(n))
	default:
		return binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(n))
	}
}

func mpString(b []byte, s string) []byte { return append(mpStrHeader(b, len(s)), s...) }

func mpBytes(b []byte, s []byte) []byte { return append(mpStrHeader(b, len(s)), s...) }

// mpUint writes v, which stays below 2^53 so Lua numbers hold it exactly.
func mpUint(b []byte, v uint64) []byte {
	switch {
	case v < 128:
		return append(b, byte(v))
	case v < 1<<8:
		return append(b, 0xcc, byte(v))
	case v < 1<<16:
		return binary.BigEndian.AppendUint16(append(b, 0xcd), uint16(v))
	case v < 1<<32:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(v))
	default:
		return binary.BigEndian.AppendUint64(append(b, 0xcf), v)
	}
}

// mpAppendString writes as one string what add appends, for values formatted
// in place: the header is reserved at its widest and filled in afterwards.
func mpAppendString(b []byte, add func([]byte) []byte) []byte {
	head := len(b)
	b = append(b, 0xdb, 0, 0, 0, 0)
	b = add(b)
	binary.BigEndian.PutUint32(b[head+1:], uint32(len(b)-head-5))
	return b
}
