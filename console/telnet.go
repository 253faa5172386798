package console

// Telnet commands (RFC 854) and the options a capture accepts.
const (
	tnSE   = 240
	tnSB   = 250
	tnWILL = 251
	tnWONT = 252
	tnDO   = 253
	tnDONT = 254
	tnIAC  = 255

	optBinary = 0
	optEcho   = 1
	optSGA    = 3
)

// The states of the telnet filter between two bytes.
const (
	tnData   = iota // plain data
	tnCR            // after a CR: a NUL that follows is dropped
	tnCmd           // after IAC
	tnOpt           // after IAC WILL/WONT/DO/DONT: the option comes
	tnSub           // inside IAC SB ... IAC SE
	tnSubIAC        // after IAC inside a subnegotiation
)

// telnet strips telnet commands from a stream, keeping its state across
// reads, and answers the server's option negotiation: it accepts BINARY,
// ECHO and SUPPRESS-GO-AHEAD offered by the server (WILL), refuses any
// other (DONT), and refuses every option the server asks it to enable
// (WONT).
type telnet struct {
	state   int
	verb    byte
	server  [256]bool // the server's options enabled
	refused map[[2]byte]bool
}

// filter returns the data of p with telnet commands removed (in p's
// memory: the data is never longer than p) and the replies to send to
// the server.
func (t *telnet) filter(p []byte) (data, reply []byte) {
	out := p[:0]
	for i := 0; i < len(p); i++ {
		b := p[i]
		switch t.state {
		case tnData:
			switch b {
			case tnIAC:
				t.state = tnCmd
			case '\r':
				out = append(out, b)
				if !t.server[optBinary] {
					t.state = tnCR
				}
			default:
				out = append(out, b)
			}
		case tnCR:
			t.state = tnData
			if b != 0 {
				i-- // not CR NUL: b is data, or a command
			}
		case tnCmd:
			switch b {
			case tnIAC:
				out = append(out, tnIAC)
				t.state = tnData
			case tnWILL, tnWONT, tnDO, tnDONT:
				t.verb = b
				t.state = tnOpt
			case tnSB:
				t.state = tnSub
			default: // a command without an argument (NOP, GA, AYT, ...)
				t.state = tnData
			}
		case tnOpt:
			reply = t.answer(reply, t.verb, b)
			t.state = tnData
		case tnSub:
			if b == tnIAC {
				t.state = tnSubIAC
			}
		case tnSubIAC:
			switch b {
			case tnSE:
				t.state = tnData
			case tnIAC: // an escaped 255 inside the subnegotiation
				t.state = tnSub
			default: // a subnegotiation never ended: b is a command
				t.state = tnCmd
				i--
			}
		}
	}
	return out, reply
}

// answer appends the reply to IAC verb opt, if one is due, to reply,
// following RFC 854's rules: a request to enter the state an option is
// already in gets no reply.
func (t *telnet) answer(reply []byte, verb, opt byte) []byte {
	switch verb {
	case tnWILL:
		if opt == optBinary || opt == optEcho || opt == optSGA {
			if t.server[opt] {
				return reply // an acknowledgement of our DO
			}
			t.server[opt] = true
			return append(reply, tnIAC, tnDO, opt)
		}
		return t.refuse(reply, tnDONT, opt)
	case tnWONT:
		if t.server[opt] {
			t.server[opt] = false
			return append(reply, tnIAC, tnDONT, opt)
		}
	case tnDO:
		return t.refuse(reply, tnWONT, opt)
	}
	return reply // DONT: we enable no option of ours
}

// refuse appends IAC verb opt to reply, the first time only: a server
// that asks again after a refusal is not answered again, so that the
// two cannot loop.
func (t *telnet) refuse(reply []byte, verb, opt byte) []byte {
	key := [2]byte{verb, opt}
	if t.refused[key] {
		return reply
	}
	if t.refused == nil {
		t.refused = map[[2]byte]bool{}
	}
	t.refused[key] = true
	return append(reply, tnIAC, verb, opt)
}
