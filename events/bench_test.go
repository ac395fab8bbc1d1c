package events

import "testing"

// BenchmarkDecodeBinary decodes a binary-mode input as NewInput (and the
// CloudEvents SDK) write it: lower-case ce-* headers.
func BenchmarkDecodeBinary(b *testing.B) {
	m, err := NewInput(Subjects{}, AgentPresenceSet, "a-1", "ev-1", "desk", []byte(`{"presenceId":"training"}`))
	if err != nil {
		b.Fatal(err)
	}
	subs := Subjects{}
	b.ReportAllocs()
	for b.Loop() {
		if _, rej := subs.Decode(agentSubj, m.Header, m.Data); rej != nil {
			b.Fatal(rej)
		}
	}
}

// BenchmarkDecodeBinaryMixedCase: header names in other cases are normalised first.
func BenchmarkDecodeBinaryMixedCase(b *testing.B) {
	h, data := agentEvent(AgentPresenceSet, "a-1", `{"presenceId":"training"}`).encode(b, binaryMode)
	subs := Subjects{}
	b.ReportAllocs()
	for b.Loop() {
		if _, rej := subs.Decode(agentSubj, h, data); rej != nil {
			b.Fatal(rej)
		}
	}
}

func BenchmarkDecodeStructured(b *testing.B) {
	h, data := agentEvent(AgentPresenceSet, "a-1", `{"presenceId":"training"}`).encode(b, structuredCT)
	subs := Subjects{}
	b.ReportAllocs()
	for b.Loop() {
		if _, rej := subs.Decode(agentSubj, h, data); rej != nil {
			b.Fatal(rej)
		}
	}
}

func BenchmarkEncodeStatus(b *testing.B) {
	st := sampleStatus()
	st.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	subs := Subjects{}
	id := StatusID(st.Cause, st.AgentID, st.Version)
	b.ReportAllocs()
	for b.Loop() {
		if msg := subs.EncodeStatus("presenced", id, st); len(msg.Data) == 0 {
			b.Fatal("no data")
		}
	}
}
