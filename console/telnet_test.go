package console

import (
	"bytes"
	"testing"
)

const (
	iac  = "\xff"
	will = "\xfb"
	wont = "\xfc"
	do   = "\xfd"
	dont = "\xfe"
	sb   = "\xfa"
	se   = "\xf0"
	echo = "\x01"
	sga  = "\x03"
	ttyp = "\x18" // TERMINAL-TYPE
	nop  = "\xf1"
)

func TestTelnetFilter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		reads   []string // what the server sends, read by read
		data    string   // what the capture keeps
		replies string   // what the capture answers
	}{
		{"plain", []string{"hello\nworld\n"}, "hello\nworld\n", ""},
		{"escaped IAC", []string{"a" + iac + iac + "b"}, "a\xffb", ""},
		{"escaped IAC split", []string{"a" + iac, iac + "b"}, "a\xffb", ""},
		{"two-byte command", []string{"a" + iac + nop + "b"}, "ab", ""},
		{"WILL ECHO accepted", []string{iac + will + echo + "login:"}, "login:", iac + do + echo},
		{"WILL ECHO acknowledged once", []string{iac + will + echo, iac + will + echo + "x"}, "x", iac + do + echo},
		{"WILL other refused once", []string{iac + will + ttyp + iac + will + ttyp}, "", iac + dont + ttyp},
		{"DO refused", []string{iac + do + ttyp + "x"}, "x", iac + wont + ttyp},
		{"DO split across reads", []string{"a" + iac, do, ttyp + "b"}, "ab", iac + wont + ttyp},
		{"DONT and WONT need no reply", []string{iac + dont + echo + iac + wont + sga + "x"}, "x", ""},
		{"WONT after WILL acknowledged", []string{iac + will + sga, iac + wont + sga}, "", iac + do + sga + iac + dont + sga},
		{"subnegotiation", []string{"a" + iac + sb + ttyp + "\x01" + iac + se + "b"}, "ab", ""},
		{"subnegotiation split", []string{"a" + iac, sb + ttyp, "\x00xterm", iac, se + "b"}, "ab", ""},
		{"IAC IAC inside subnegotiation", []string{iac + sb + ttyp + iac + iac + "z" + iac + se + "c"}, "c", ""},
		{"subnegotiation cut by a command", []string{iac + sb + ttyp + "x" + iac + do + echo + "d"}, "d", iac + wont + echo},
		{"CR NUL", []string{"a\r\x00b\r\nc"}, "a\rb\r\nc", ""},
		{"CR NUL split", []string{"a\r", "\x00b"}, "a\rb", ""},
		{"CR then IAC", []string{"a\r", iac + iac}, "a\r\xff", ""},
		{"CR NUL kept in binary mode", []string{iac + will + "\x00" + "a\r\x00b"}, "a\r\x00b", iac + do + "\x00"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tn telnet
			var data, replies []byte
			for _, r := range tc.reads {
				d, rep := tn.filter([]byte(r))
				data = append(data, d...)
				replies = append(replies, rep...)
			}
			if !bytes.Equal(data, []byte(tc.data)) {
				t.Errorf("data = %q, want %q", data, tc.data)
			}
			if !bytes.Equal(replies, []byte(tc.replies)) {
				t.Errorf("replies = %q, want %q", replies, tc.replies)
			}
		})
	}
}
