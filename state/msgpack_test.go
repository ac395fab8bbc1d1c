package state

import (
	"encoding/binary"
	"fmt"
	"reflect"
	"testing"

	"github.com/presenced/presenced/handlers"
)

// mpDecode reads back what the msgpack writers write, as the script's cmsgpack
// would: strings, unsigned integers and arrays.
func mpDecode(b []byte) (any, []byte, error) {
	if len(b) == 0 {
		return nil, nil, fmt.Errorf("short input")
	}
	c, b := b[0], b[1:]
	strOf := func(n int, b []byte) (any, []byte, error) {
		if len(b) < n {
			return nil, nil, fmt.Errorf("string of %d bytes, %d left", n, len(b))
		}
		return string(b[:n]), b[n:], nil
	}
	arrOf := func(n int, b []byte) (any, []byte, error) {
		out := make([]any, 0, n)
		for range n {
			v, rest, err := mpDecode(b)
			if err != nil {
				return nil, nil, err
			}
			out, b = append(out, v), rest
		}
		return out, b, nil
	}
	switch {
	case c < 0x80:
		return uint64(c), b, nil
	case c&0xf0 == 0x90:
		return arrOf(int(c&0x0f), b)
	case c&0xe0 == 0xa0:
		return strOf(int(c&0x1f), b)
	}
	switch c {
	case 0xcc:
		return uint64(b[0]), b[1:], nil
	case 0xcd:
		return uint64(binary.BigEndian.Uint16(b)), b[2:], nil
	case 0xce:
		return uint64(binary.BigEndian.Uint32(b)), b[4:], nil
	case 0xcf:
		return binary.BigEndian.Uint64(b), b[8:], nil
	case 0xd9:
		return strOf(int(b[0]), b[1:])
	case 0xda:
		return strOf(int(binary.BigEndian.Uint16(b)), b[2:])
	case 0xdb:
		return strOf(int(binary.BigEndian.Uint32(b)), b[4:])
	case 0xdc:
		return arrOf(int(binary.BigEndian.Uint16(b)), b[2:])
	case 0xdd:
		return arrOf(int(binary.BigEndian.Uint32(b)), b[4:])
	}
	return nil, nil, fmt.Errorf("unexpected byte %#x", c)
}

// changedFields is appendFields as field, value strings.
func changedFields(t *testing.T, before, a handlers.Agent) []string {
	t.Helper()
	b, n := appendFields(nil, &before, a)
	var out []string
	for len(b) > 0 {
		v, rest, err := mpDecode(b)
		if err != nil {
			t.Fatal(err)
		}
		out, b = append(out, v.(string)), rest
	}
	if len(out) != 2*n {
		t.Fatalf("%d pairs reported, %d strings written", n, len(out))
	}
	return out
}

func TestMsgpackRoundTrip(t *testing.T) {
	long := string(make([]byte, 70000))
	var b []byte
	b = mpArray(b, 7)
	for _, v := range []uint64{0, 127, 128, 255, 65535, 1<<32 - 1, 1<<53 - 1} {
		b = mpUint(b, v)
	}
	b = mpArray(b, 20)
	for i := range 20 {
		b = mpString(b, long[:i*i*i*10])
	}
	b = mpAppendString(b, func(b []byte) []byte { return append(b, "formatted"...) })
	b = mpBytes(b, []byte(long))
	var got []any
	for len(b) > 0 {
		v, rest, err := mpDecode(b)
		if err != nil {
			t.Fatal(err)
		}
		got, b = append(got, v), rest
	}
	want := []any{
		[]any{uint64(0), uint64(127), uint64(128), uint64(255), uint64(65535), uint64(1<<32 - 1), uint64(1<<53 - 1)},
	}
	strs := make([]any, 20)
	for i := range 20 {
		strs[i] = long[:i*i*i*10]
	}
	want = append(want, strs, "formatted", long)
	if !reflect.DeepEqual(got, want) {
		t.Fatal("msgpack round trip differs")
	}
}
