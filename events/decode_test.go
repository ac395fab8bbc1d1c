package events

import (
	"maps"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	agentSubj  = "presence.in.agent.a-1"
	routerSubj = "presence.in.router.a-1"
	systemSubj = "presence.in.system.a-1"
	configSubj = "presence.in.config"
)

// TestDecodeData runs every type's data rules in every mode: the rules are about the
// data, so the envelope it came in must not matter.
func TestDecodeData(t *testing.T) {
	long := func(c string, n int) string { return strings.Repeat(c, n) }
	deadline := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

	tests := []struct {
		name    string
		subject string
		in      input
		code    Code
		data    any    // wanted Event.Data when accepted
		agent   string // wanted Event.AgentID when accepted
	}{
		// agent.login / logout / heartbeat
		{name: "login without data opens the default session", subject: agentSubj,
			in: agentEvent(AgentLogin, "a-1", ""), data: SessionData{SessionID: DefaultSessionID}, agent: "a-1"},
		{name: "login with empty object", subject: agentSubj,
			in: agentEvent(AgentLogin, "a-1", `{}`), data: SessionData{SessionID: DefaultSessionID}, agent: "a-1"},
		{name: "login with null data", subject: agentSubj,
			in: agentEvent(AgentLogin, "a-1", `null`), data: SessionData{SessionID: DefaultSessionID}, agent: "a-1"},
		{name: "login with null sessionId", subject: agentSubj,
			in: agentEvent(AgentLogin, "a-1", `{"sessionId":null}`), data: SessionData{SessionID: DefaultSessionID}, agent: "a-1"},
		{name: "login with sessionId", subject: agentSubj,
			in: agentEvent(AgentLogin, "a-1", `{"sessionId":"desk:tab-1.A_b"}`), data: SessionData{SessionID: "desk:tab-1.A_b"}, agent: "a-1"},
		{name: "login ignores unknown fields", subject: agentSubj,
			in: agentEvent(AgentLogin, "a-1", `{"sessionId":"s1","device":{"os":"ios"}}`), data: SessionData{SessionID: "s1"}, agent: "a-1"},
		{name: "login key match is case-sensitive", subject: agentSubj,
			in: agentEvent(AgentLogin, "a-1", `{"SessionId":"s1"}`), data: SessionData{SessionID: DefaultSessionID}, agent: "a-1"},
		{name: "login sessionId of 128 chars", subject: agentSubj,
			in: agentEvent(AgentLogin, "a-1", `{"sessionId":"`+long("s", 128)+`"}`), data: SessionData{SessionID: long("s", 128)}, agent: "a-1"},
		{name: "login sessionId of 129 chars", subject: agentSubj,
			in: agentEvent(AgentLogin, "a-1", `{"sessionId":"`+long("s", 129)+`"}`), code: CodeInvalidData},
		{name: "login empty sessionId", subject: agentSubj,
			in: agentEvent(AgentLogin, "a-1", `{"sessionId":""}`), code: CodeInvalidData},
		{name: "login sessionId with space", subject: agentSubj,
			in: agentEvent(AgentLogin, "a-1", `{"sessionId":"a b"}`), code: CodeInvalidData},
		{name: "login sessionId not a string", subject: agentSubj,
			in: agentEvent(AgentLogin, "a-1", `{"sessionId":5}`), code: CodeInvalidData},
		{name: "login data an array", subject: agentSubj,
			in: agentEvent(AgentLogin, "a-1", `["s1"]`), code: CodeInvalidData},
		{name: "login data a string", subject: agentSubj,
			in: agentEvent(AgentLogin, "a-1", `"s1"`), code: CodeInvalidData},
		{name: "logout with sessionId", subject: agentSubj,
			in: agentEvent(AgentLogout, "a-1", `{"sessionId":"s2"}`), data: SessionData{SessionID: "s2"}, agent: "a-1"},
		{name: "logout without data", subject: agentSubj,
			in: agentEvent(AgentLogout, "a-1", ""), data: SessionData{SessionID: DefaultSessionID}, agent: "a-1"},
		{name: "heartbeat with sessionId", subject: agentSubj,
			in: agentEvent(AgentHeartbeat, "a-1", `{"sessionId":"s3"}`), data: SessionData{SessionID: "s3"}, agent: "a-1"},
		{name: "heartbeat bad sessionId", subject: agentSubj,
			in: agentEvent(AgentHeartbeat, "a-1", `{"sessionId":"s/3"}`), code: CodeInvalidData},

		// agent.presence.set
		{name: "presence set", subject: agentSubj,
			in: agentEvent(AgentPresenceSet, "a-1", `{"presenceId":"training"}`), data: PresenceSetData{PresenceID: "training"}, agent: "a-1"},
		{name: "presence set without data", subject: agentSubj,
			in: agentEvent(AgentPresenceSet, "a-1", ""), code: CodeInvalidData},
		{name: "presence set missing presenceId", subject: agentSubj,
			in: agentEvent(AgentPresenceSet, "a-1", `{}`), code: CodeInvalidData},
		{name: "presence set empty presenceId", subject: agentSubj,
			in: agentEvent(AgentPresenceSet, "a-1", `{"presenceId":""}`), code: CodeInvalidData},
		{name: "presence set null presenceId", subject: agentSubj,
			in: agentEvent(AgentPresenceSet, "a-1", `{"presenceId":null}`), code: CodeInvalidData},
		{name: "presence set numeric presenceId", subject: agentSubj,
			in: agentEvent(AgentPresenceSet, "a-1", `{"presenceId":3}`), code: CodeInvalidData},

		// notifications
		{name: "missed without data", subject: routerSubj,
			in: agentEvent(NotificationMissed, "a-1", ""), data: NotificationData{}, agent: "a-1"},
		{name: "missed with ids", subject: routerSubj,
			in:   agentEvent(NotificationMissed, "a-1", `{"workItemId":"w-9","workstreamId":"chat"}`),
			data: NotificationData{WorkItemID: "w-9", WorkstreamID: "chat"}, agent: "a-1"},
		{name: "missed with numeric workItemId", subject: routerSubj,
			in: agentEvent(NotificationMissed, "a-1", `{"workItemId":9}`), code: CodeInvalidData},
		{name: "rejected with workstream only", subject: routerSubj,
			in: agentEvent(NotificationRejected, "a-1", `{"workstreamId":"voice"}`), data: NotificationData{WorkstreamID: "voice"}, agent: "a-1"},
		{name: "rejected with numeric workstreamId", subject: routerSubj,
			in: agentEvent(NotificationRejected, "a-1", `{"workstreamId":false}`), code: CodeInvalidData},

		// agent.capacity.changed
		{name: "capacity idle", subject: routerSubj,
			in: agentEvent(AgentCapacityChanged, "a-1", `{"used":0,"total":1}`), data: CapacityData{Used: 0, Total: 1}, agent: "a-1"},
		{name: "capacity over full", subject: routerSubj,
			in: agentEvent(AgentCapacityChanged, "a-1", `{"used":5,"total":3}`), data: CapacityData{Used: 5, Total: 3}, agent: "a-1"},
		{name: "capacity without data", subject: routerSubj,
			in: agentEvent(AgentCapacityChanged, "a-1", ""), code: CodeInvalidData},
		{name: "capacity missing used", subject: routerSubj,
			in: agentEvent(AgentCapacityChanged, "a-1", `{"total":1}`), code: CodeInvalidData},
		{name: "capacity missing total", subject: routerSubj,
			in: agentEvent(AgentCapacityChanged, "a-1", `{"used":0}`), code: CodeInvalidData},
		{name: "capacity null used", subject: routerSubj,
			in: agentEvent(AgentCapacityChanged, "a-1", `{"used":null,"total":1}`), code: CodeInvalidData},
		{name: "capacity negative used", subject: routerSubj,
			in: agentEvent(AgentCapacityChanged, "a-1", `{"used":-1,"total":1}`), code: CodeInvalidData},
		{name: "capacity zero total", subject: routerSubj,
			in: agentEvent(AgentCapacityChanged, "a-1", `{"used":0,"total":0}`), code: CodeInvalidData},
		{name: "capacity fractional used", subject: routerSubj,
			in: agentEvent(AgentCapacityChanged, "a-1", `{"used":1.5,"total":2}`), code: CodeInvalidData},
		{name: "capacity string total", subject: routerSubj,
			in: agentEvent(AgentCapacityChanged, "a-1", `{"used":1,"total":"2"}`), code: CodeInvalidData},
		{name: "capacity overflowing total", subject: routerSubj,
			in: agentEvent(AgentCapacityChanged, "a-1", `{"used":1,"total":99999999999999999999}`), code: CodeInvalidData},

		// presence.configured
		{name: "presence configured in full", subject: configSubj,
			in:   configEvent(PresenceConfigured, `{"id":"training","name":"Away – in training","text":"In training","baseStatus":"away","description":"Scheduled training","selectable":false}`),
			data: PresenceConfiguredData{ID: "training", Name: "Away – in training", Text: "In training", BaseStatus: Away, Description: "Scheduled training", Selectable: false}},
		{name: "presence configured defaults", subject: configSubj,
			in:   configEvent(PresenceConfigured, `{"id":"chat-only","name":"Chat only","text":"Chat only","baseStatus":"available"}`),
			data: PresenceConfiguredData{ID: "chat-only", Name: "Chat only", Text: "Chat only", BaseStatus: Available, Selectable: true}},
		{name: "presence configured null selectable is true", subject: configSubj,
			in:   configEvent(PresenceConfigured, `{"id":"x_1","name":"X","text":"X","baseStatus":"busy","selectable":null}`),
			data: PresenceConfiguredData{ID: "x_1", Name: "X", Text: "X", BaseStatus: Busy, Selectable: true}},
		{name: "presence configured 256-character name", subject: configSubj,
			in:   configEvent(PresenceConfigured, `{"id":"p","name":"`+long("é", 256)+`","text":"T","baseStatus":"offline"}`),
			data: PresenceConfiguredData{ID: "p", Name: long("é", 256), Text: "T", BaseStatus: Offline, Selectable: true}},
		{name: "presence configured 257-character text", subject: configSubj,
			in: configEvent(PresenceConfigured, `{"id":"p","name":"N","text":"`+long("é", 257)+`","baseStatus":"offline"}`), code: CodeInvalidData},
		{name: "presence configured built-in id", subject: configSubj,
			in: configEvent(PresenceConfigured, `{"id":"away","name":"Away","text":"Away","baseStatus":"away"}`), code: CodeBuiltinImmutable},
		{name: "presence configured inactive is built in", subject: configSubj,
			in: configEvent(PresenceConfigured, `{"id":"inactive","name":"I","text":"I","baseStatus":"away"}`), code: CodeBuiltinImmutable},
		{name: "presence configured upper-case id", subject: configSubj,
			in: configEvent(PresenceConfigured, `{"id":"Training","name":"T","text":"T","baseStatus":"away"}`), code: CodeInvalidData},
		{name: "presence configured 65-character id", subject: configSubj,
			in: configEvent(PresenceConfigured, `{"id":"`+long("p", 65)+`","name":"T","text":"T","baseStatus":"away"}`), code: CodeInvalidData},
		{name: "presence configured missing id", subject: configSubj,
			in: configEvent(PresenceConfigured, `{"name":"T","text":"T","baseStatus":"away"}`), code: CodeInvalidData},
		{name: "presence configured missing name", subject: configSubj,
			in: configEvent(PresenceConfigured, `{"id":"p","text":"T","baseStatus":"away"}`), code: CodeInvalidData},
		{name: "presence configured empty text", subject: configSubj,
			in: configEvent(PresenceConfigured, `{"id":"p","name":"N","text":"","baseStatus":"away"}`), code: CodeInvalidData},
		{name: "presence configured unknown base status", subject: configSubj,
			in: configEvent(PresenceConfigured, `{"id":"p","name":"N","text":"T","baseStatus":"lunch"}`), code: CodeInvalidData},
		{name: "presence configured missing base status", subject: configSubj,
			in: configEvent(PresenceConfigured, `{"id":"p","name":"N","text":"T"}`), code: CodeInvalidData},
		{name: "presence configured numeric description", subject: configSubj,
			in: configEvent(PresenceConfigured, `{"id":"p","name":"N","text":"T","baseStatus":"away","description":1}`), code: CodeInvalidData},
		{name: "presence configured string selectable", subject: configSubj,
			in: configEvent(PresenceConfigured, `{"id":"p","name":"N","text":"T","baseStatus":"away","selectable":"yes"}`), code: CodeInvalidData},
		{name: "presence configured without data", subject: configSubj,
			in: configEvent(PresenceConfigured, ""), code: CodeInvalidData},

		// presence.removed
		{name: "presence removed", subject: configSubj,
			in: configEvent(PresenceRemoved, `{"id":"training"}`), data: PresenceRemovedData{ID: "training"}},
		{name: "presence removed built-in", subject: configSubj,
			in: configEvent(PresenceRemoved, `{"id":"busy"}`), code: CodeBuiltinImmutable},
		{name: "presence removed missing id", subject: configSubj,
			in: configEvent(PresenceRemoved, `{}`), code: CodeInvalidData},
		{name: "presence removed invalid id", subject: configSubj,
			in: configEvent(PresenceRemoved, `{"id":"no way"}`), code: CodeInvalidData},

		// agent.configured
		{name: "agent configured default", subject: configSubj,
			in:   configEvent(AgentConfigured, `{"agentId":"a-2","defaultPresenceId":"busy"}`),
			data: AgentConfiguredData{AgentID: "a-2", DefaultPresenceID: strPtr("busy")}, agent: "a-2"},
		{name: "agent configured null clears", subject: configSubj,
			in:   configEvent(AgentConfigured, `{"agentId":"a-2","defaultPresenceId":null}`),
			data: AgentConfiguredData{AgentID: "a-2"}, agent: "a-2"},
		{name: "agent configured without defaultPresenceId key", subject: configSubj,
			in: configEvent(AgentConfigured, `{"agentId":"a-2"}`), code: CodeInvalidData},
		{name: "agent configured empty default", subject: configSubj,
			in: configEvent(AgentConfigured, `{"agentId":"a-2","defaultPresenceId":""}`), code: CodeInvalidData},
		{name: "agent configured numeric default", subject: configSubj,
			in: configEvent(AgentConfigured, `{"agentId":"a-2","defaultPresenceId":7}`), code: CodeInvalidData},
		{name: "agent configured invalid agent", subject: configSubj,
			in: configEvent(AgentConfigured, `{"agentId":"a.2","defaultPresenceId":null}`), code: CodeInvalidData},
		{name: "agent configured missing agent", subject: configSubj,
			in: configEvent(AgentConfigured, `{"defaultPresenceId":null}`), code: CodeInvalidData},

		// agent.removed
		{name: "agent removed", subject: configSubj,
			in: configEvent(AgentRemoved, `{"agentId":"a-3"}`), data: AgentRemovedData{AgentID: "a-3"}, agent: "a-3"},
		{name: "agent removed invalid agent", subject: configSubj,
			in: configEvent(AgentRemoved, `{"agentId":"`+long("a", 129)+`"}`), code: CodeInvalidData},
		{name: "agent removed missing agent", subject: configSubj,
			in: configEvent(AgentRemoved, ""), code: CodeInvalidData},

		// settings.configured: omitted, null, value
		{name: "settings all omitted", subject: configSubj,
			in: configEvent(SettingsConfigured, `{}`), data: SettingsConfiguredData{}},
		{name: "settings without data", subject: configSubj,
			in: configEvent(SettingsConfigured, ""), data: SettingsConfiguredData{}},
		{name: "settings all null", subject: configSubj,
			in: configEvent(SettingsConfigured, `{"defaultPresenceId":null,"missedNotification":null,"rejectedNotification":null,"sessionTtlSeconds":null,"reconnectGraceSeconds":null}`),
			data: SettingsConfiguredData{
				DefaultPresenceID:     Optional[string]{Present: true, Null: true},
				MissedNotification:    Optional[bool]{Present: true, Null: true},
				RejectedNotification:  Optional[bool]{Present: true, Null: true},
				SessionTTLSeconds:     Optional[int]{Present: true, Null: true},
				ReconnectGraceSeconds: Optional[int]{Present: true, Null: true},
			}},
		{name: "settings all values", subject: configSubj,
			in: configEvent(SettingsConfigured, `{"defaultPresenceId":"away","missedNotification":false,"rejectedNotification":true,"sessionTtlSeconds":0,"reconnectGraceSeconds":604800}`),
			data: SettingsConfiguredData{
				DefaultPresenceID:     Optional[string]{Present: true, Value: "away"},
				MissedNotification:    Optional[bool]{Present: true, Value: false},
				RejectedNotification:  Optional[bool]{Present: true, Value: true},
				SessionTTLSeconds:     Optional[int]{Present: true, Value: 0},
				ReconnectGraceSeconds: Optional[int]{Present: true, Value: 604800},
			}},
		{name: "settings mixed", subject: configSubj,
			in: configEvent(SettingsConfigured, `{"sessionTtlSeconds":90,"defaultPresenceId":null}`),
			data: SettingsConfiguredData{
				DefaultPresenceID: Optional[string]{Present: true, Null: true},
				SessionTTLSeconds: Optional[int]{Present: true, Value: 90},
			}},
		{name: "settings negative ttl", subject: configSubj,
			in: configEvent(SettingsConfigured, `{"sessionTtlSeconds":-1}`), code: CodeInvalidData},
		{name: "settings grace over a week", subject: configSubj,
			in: configEvent(SettingsConfigured, `{"reconnectGraceSeconds":604801}`), code: CodeInvalidData},
		{name: "settings fractional ttl", subject: configSubj,
			in: configEvent(SettingsConfigured, `{"sessionTtlSeconds":1.5}`), code: CodeInvalidData},
		{name: "settings string flag", subject: configSubj,
			in: configEvent(SettingsConfigured, `{"missedNotification":"yes"}`), code: CodeInvalidData},
		{name: "settings empty default", subject: configSubj,
			in: configEvent(SettingsConfigured, `{"defaultPresenceId":""}`), code: CodeInvalidData},
		{name: "settings numeric default", subject: configSubj,
			in: configEvent(SettingsConfigured, `{"defaultPresenceId":1}`), code: CodeInvalidData},

		// session.expired
		{name: "session expired", subject: systemSubj,
			in:   agentEvent(SessionExpired, "a-1", `{"sessionId":"s1","deadline":"2026-11-23T10:00:00Z"}`),
			data: SessionExpiredData{SessionID: "s1", Deadline: deadline}, agent: "a-1"},
		{name: "session expired missing deadline", subject: systemSubj,
			in: agentEvent(SessionExpired, "a-1", `{"sessionId":"s1"}`), code: CodeInvalidData},
		{name: "session expired bad deadline", subject: systemSubj,
			in: agentEvent(SessionExpired, "a-1", `{"sessionId":"s1","deadline":"yesterday"}`), code: CodeInvalidData},
		{name: "session expired missing session", subject: systemSubj,
			in: agentEvent(SessionExpired, "a-1", `{"deadline":"2026-11-23T10:00:00Z"}`), code: CodeInvalidData},
	}
	for _, tt := range tests {
		for _, m := range allModes {
			t.Run(tt.name+"/"+m.String(), func(t *testing.T) {
				h, payload := tt.in.encode(t, m)
				ev, rej := Subjects{}.Decode(tt.subject, h, payload)
				wantCode(t, rej, tt.code)
				if rej != nil {
					return
				}
				if !reflect.DeepEqual(ev.Data, tt.data) {
					t.Fatalf("data = %#v, want %#v", ev.Data, tt.data)
				}
				if ev.AgentID != tt.agent {
					t.Errorf("agent = %q, want %q", ev.AgentID, tt.agent)
				}
				role, _ := RoleOf(Type(tt.in.typ))
				if ev.Type != Type(tt.in.typ) || ev.Role != role || ev.ID != tt.in.id || ev.Source != tt.in.source || ev.Subject != tt.in.ceSubject {
					t.Errorf("envelope = %+v, want type %s role %s id %s source %s subject %q", ev, tt.in.typ, role, tt.in.id, tt.in.source, tt.in.ceSubject)
				}
				if !ev.Stored.IsZero() || ev.Seq != 0 {
					t.Errorf("Stored/Seq set by Decode: %v %d", ev.Stored, ev.Seq)
				}
			})
		}
	}
}

// TestDecodeEnvelope covers the checks before the data: size, mode, subject, type and
// agent, in both modes where they apply to both.
func TestDecodeEnvelope(t *testing.T) {
	login := agentEvent(AgentLogin, "a-1", `{"sessionId":"s1"}`)
	bin := func(in input, edit func(h map[string][]string)) (map[string][]string, []byte) {
		h, p := in.encode(t, binaryMode)
		if edit != nil {
			edit(h)
		}
		return h, p
	}
	pad := func(n int) []byte {
		// A valid login object of exactly n bytes.
		const head, tail = `{"sessionId":"s1","pad":"`, `"}`
		return []byte(head + strings.Repeat("x", n-len(head)-len(tail)) + tail)
	}

	type wire struct {
		h map[string][]string
		p []byte
	}
	w := func(h map[string][]string, p []byte) wire { return wire{h, p} }
	tests := []struct {
		name    string
		subj    Subjects
		subject string
		wire    wire
		code    Code
	}{
		{name: "payload of exactly 64 KiB", subject: agentSubj,
			wire: w(bin(input{id: "e", source: "s", typ: string(AgentLogin), ceSubject: "a-1", data: string(pad(MaxPayload))}, nil))},
		{name: "payload over 64 KiB", subject: agentSubj,
			wire: w(bin(input{id: "e", source: "s", typ: string(AgentLogin), ceSubject: "a-1", data: string(pad(MaxPayload + 1))}, nil)), code: CodeTooLarge},
		{name: "too large wins over malformed", subject: "nowhere",
			wire: w(nil, make([]byte, MaxPayload+1)), code: CodeTooLarge},

		// malformed
		{name: "structured payload not JSON", subject: agentSubj, wire: w(nil, []byte("hello")), code: CodeMalformed},
		{name: "structured payload empty", subject: agentSubj, wire: w(nil, nil), code: CodeMalformed},
		{name: "structured trailing garbage", subject: agentSubj,
			wire: w(nil, []byte(`{"specversion":"1.0","id":"e","source":"s","type":"agent.login","subject":"a-1"} x`)), code: CodeMalformed},
		{name: "structured without specversion", subject: agentSubj,
			wire: w(nil, []byte(`{"id":"e","source":"s","type":"agent.login","subject":"a-1"}`)), code: CodeMalformed},
		{name: "structured specversion 0.3", subject: agentSubj,
			wire: w(nil, []byte(`{"specversion":"0.3","id":"e","source":"s","type":"agent.login","subject":"a-1"}`)), code: CodeMalformed},
		{name: "structured specversion 2.0", subject: agentSubj,
			wire: w(nil, []byte(`{"specversion":"2.0","id":"e","source":"s","type":"agent.login","subject":"a-1"}`)), code: CodeMalformed},
		{name: "structured missing id", subject: agentSubj,
			wire: w(nil, []byte(`{"specversion":"1.0","source":"s","type":"agent.login","subject":"a-1"}`)), code: CodeMalformed},
		{name: "structured blank id", subject: agentSubj,
			wire: w(nil, []byte(`{"specversion":"1.0","id":"  ","source":"s","type":"agent.login","subject":"a-1"}`)), code: CodeMalformed},
		{name: "structured missing source", subject: agentSubj,
			wire: w(nil, []byte(`{"specversion":"1.0","id":"e","type":"agent.login","subject":"a-1"}`)), code: CodeMalformed},
		{name: "structured missing type", subject: agentSubj,
			wire: w(nil, []byte(`{"specversion":"1.0","id":"e","source":"s","subject":"a-1"}`)), code: CodeMalformed},
		{name: "structured id with control character", subject: agentSubj,
			wire: w(nil, []byte(`{"specversion":"1.0","id":"e\u0000","source":"s","type":"agent.login","subject":"a-1"}`)), code: CodeMalformed},
		{name: "structured text data", subject: agentSubj,
			wire: w(nil, []byte(`{"specversion":"1.0","id":"e","source":"s","type":"agent.login","subject":"a-1","datacontenttype":"text/plain","data":"hi"}`)), code: CodeMalformed},
		{name: "structured data_base64 of JSON", subject: agentSubj,
			wire: w(nil, []byte(`{"specversion":"1.0","id":"e","source":"s","type":"agent.login","subject":"a-1","datacontenttype":"application/json","data_base64":"eyJzZXNzaW9uSWQiOiJzMSJ9"}`))},
		{name: "structured data_base64 of non-JSON", subject: agentSubj,
			wire: w(nil, []byte(`{"specversion":"1.0","id":"e","source":"s","type":"agent.login","subject":"a-1","data_base64":"aGk="}`)), code: CodeMalformed},
		{name: "structured data_base64 not a string", subject: agentSubj,
			wire: w(nil, []byte(`{"specversion":"1.0","id":"e","source":"s","type":"agent.login","subject":"a-1","data_base64":5}`)), code: CodeMalformed},
		{name: "structured bad time", subject: agentSubj,
			wire: w(nil, []byte(`{"specversion":"1.0","id":"e","source":"s","type":"agent.login","subject":"a-1","time":"noon"}`)), code: CodeMalformed},
		// The SDK treats only a few media types as JSON values in structured mode and
		// reads the data of any other +json type as a string holding the JSON, which
		// is also how it writes them.
		{name: "structured +json data as the SDK writes it", subject: agentSubj,
			wire: w(nil, []byte(`{"specversion":"1.0","id":"e","source":"s","type":"agent.login","subject":"a-1","datacontenttype":"application/vnd.acme+json","data":"{\"sessionId\":\"s1\"}"}`))},
		{name: "structured without datacontenttype", subject: agentSubj,
			wire: w(nil, []byte(`{"specversion":"1.0","id":"e","source":"s","type":"agent.login","subject":"a-1","data":{"sessionId":"s1"}}`))},
		{name: "binary specversion 0.3", subject: agentSubj,
			wire: w(bin(login, func(h map[string][]string) { h["Ce-Specversion"] = []string{"0.3"} })), code: CodeMalformed},
		{name: "binary empty specversion is still binary", subject: agentSubj,
			wire: w(bin(login, func(h map[string][]string) { h["Ce-Specversion"] = []string{""} })), code: CodeMalformed},
		{name: "binary missing id", subject: agentSubj,
			wire: w(bin(login, func(h map[string][]string) { delete(h, "Ce-Id") })), code: CodeMalformed},
		{name: "binary missing source", subject: agentSubj,
			wire: w(bin(login, func(h map[string][]string) { delete(h, "CE-SOURCE") })), code: CodeMalformed},
		{name: "binary missing type", subject: agentSubj,
			wire: w(bin(login, func(h map[string][]string) { delete(h, "ce-Type") })), code: CodeMalformed},
		{name: "binary data not JSON", subject: agentSubj,
			wire: w(bin(input{id: "e", source: "s", typ: string(AgentLogin), ceSubject: "a-1", data: "sessionId=s1"}, nil)), code: CodeMalformed},
		{name: "binary text/plain content type", subject: agentSubj,
			wire: w(bin(login, func(h map[string][]string) { h["Content-Type"] = []string{"text/plain"} })), code: CodeMalformed},
		{name: "binary JSON with charset", subject: agentSubj,
			wire: w(bin(login, func(h map[string][]string) { h["Content-Type"] = []string{"Application/JSON; charset=utf-8"} }))},
		{name: "binary +json content type", subject: agentSubj,
			wire: w(bin(login, func(h map[string][]string) {
				h["content-type"] = []string{"application/cloudevents+json"}
				delete(h, "Content-Type")
			}))},
		{name: "binary without content type", subject: agentSubj,
			wire: w(bin(login, func(h map[string][]string) { delete(h, "Content-Type") }))},
		{name: "binary conflicting ids in two cases", subject: agentSubj,
			wire: w(bin(login, func(h map[string][]string) { h["ce-id"] = []string{"other"} })), code: CodeMalformed},
		{name: "binary repeated id with two values", subject: agentSubj,
			wire: w(bin(login, func(h map[string][]string) { h["Ce-Id"] = []string{"e-1", "e-2"} })), code: CodeMalformed},
		{name: "binary same id in two cases", subject: agentSubj,
			wire: w(bin(login, func(h map[string][]string) { h["ce-id"] = []string{"e-1"} }))},
		{name: "binary header without values", subject: agentSubj,
			wire: w(bin(login, func(h map[string][]string) { h["Ce-Extra"] = []string{}; h["Nats-Expected-Stream"] = nil }))},
		{name: "binary bad time", subject: agentSubj,
			wire: w(bin(login, func(h map[string][]string) { h["Ce-Time"] = []string{"noon"} })), code: CodeMalformed},
		{name: "binary invalid extension name", subject: agentSubj,
			wire: w(bin(login, func(h map[string][]string) { h["Ce-Trace-Id"] = []string{"x"} })), code: CodeMalformed},

		// wrong_subject
		{name: "other prefix", subject: "other.in.agent.a-1", wire: w(bin(login, nil)), code: CodeWrongSubject},
		{name: "status subject", subject: "presence.status.a-1", wire: w(bin(login, nil)), code: CodeWrongSubject},
		{name: "no agent token", subject: "presence.in.agent", wire: w(bin(login, nil)), code: CodeWrongSubject},
		{name: "two agent tokens", subject: "presence.in.agent.a.1", wire: w(bin(login, nil)), code: CodeWrongSubject},
		{name: "unknown role", subject: "presence.in.admin.a-1", wire: w(bin(login, nil)), code: CodeWrongSubject},
		{name: "login on router subject", subject: routerSubj, wire: w(bin(login, nil)), code: CodeWrongSubject},
		{name: "login on config subject", subject: configSubj, wire: w(bin(login, nil)), code: CodeWrongSubject},
		{name: "capacity on agent subject", subject: agentSubj,
			wire: w(bin(agentEvent(AgentCapacityChanged, "a-1", `{"used":0,"total":1}`), nil)), code: CodeWrongSubject},
		{name: "config event on agent subject", subject: agentSubj,
			wire: w(bin(agentEvent(PresenceRemoved, "a-1", `{"id":"x"}`), nil)), code: CodeWrongSubject},
		{name: "forged expiry on agent subject", subject: agentSubj,
			wire: w(bin(agentEvent(SessionExpired, "a-1", `{"sessionId":"s1","deadline":"2026-11-23T10:00:00Z"}`), nil)), code: CodeWrongSubject},
		{name: "prefix with dots", subj: Subjects{Prefix: "acme.presence"}, subject: "acme.presence.in.agent.a-1", wire: w(bin(login, nil))},
		{name: "default prefix under a custom one", subj: Subjects{Prefix: "acme.presence"}, subject: agentSubj, wire: w(bin(login, nil)), code: CodeWrongSubject},

		// unsupported_type
		{name: "unknown type", subject: agentSubj,
			wire: w(bin(agentEvent("com.example.ping", "a-1", ""), nil)), code: CodeUnsupportedType},
		{name: "output type sent as input", subject: agentSubj,
			wire: w(bin(agentEvent(AgentStatusChanged, "a-1", "{}"), nil)), code: CodeUnsupportedType},

		// invalid agent token, agent_mismatch
		{name: "agent token with invalid characters", subject: "presence.in.agent.a+1",
			wire: w(bin(agentEvent(AgentLogin, "a+1", ""), nil)), code: CodeInvalidData},
		{name: "agent token too long", subject: "presence.in.router." + strings.Repeat("a", 129),
			wire: w(bin(agentEvent(NotificationMissed, strings.Repeat("a", 129), ""), nil)), code: CodeInvalidData},
		{name: "missing CloudEvents subject", subject: agentSubj,
			wire: w(bin(agentEvent(AgentLogin, "", ""), nil)), code: CodeAgentMismatch},
		{name: "other agent in CloudEvents subject", subject: agentSubj,
			wire: w(bin(agentEvent(AgentLogin, "a-2", ""), nil)), code: CodeAgentMismatch},
		{name: "CloudEvents subject differs in case", subject: agentSubj,
			wire: w(bin(agentEvent(AgentLogin, "A-1", ""), nil)), code: CodeAgentMismatch},
		{name: "structured missing CloudEvents subject", subject: routerSubj,
			wire: w(nil, []byte(`{"specversion":"1.0","id":"e","source":"s","type":"notification.missed"}`)), code: CodeAgentMismatch},
		{name: "CloudEvents subject ignored on config", subject: configSubj,
			wire: w(bin(agentEvent(PresenceRemoved, "whatever", `{"id":"x"}`), nil))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := maps.Clone(tt.wire.h)
			for k, v := range before {
				before[k] = slices.Clone(v)
			}
			payload := append([]byte(nil), tt.wire.p...)
			_, rej := tt.subj.Decode(tt.subject, tt.wire.h, tt.wire.p)
			wantCode(t, rej, tt.code)
			if !maps.EqualFunc(before, tt.wire.h, func(a, b []string) bool { return reflect.DeepEqual(a, b) }) || string(payload) != string(tt.wire.p) {
				t.Fatal("Decode changed its input")
			}
		})
	}
}

func TestDecodeTraceParent(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tests := []struct {
		name, in, want string
	}{
		{"valid", tp, tp},
		{"future version with more fields", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"},
		{"version 00 with more fields", tp + "-x", ""},
		{"upper-case hex", strings.ToUpper(tp), ""},
		{"zero trace id", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""},
		{"zero parent id", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", ""},
		{"version ff", "ff" + tp[2:], ""},
		{"short", tp[:54], ""},
		{"line break", tp[:2] + "\r\n" + tp[4:], ""},
	}
	for _, tt := range tests {
		for _, m := range allModes {
			t.Run(tt.name+"/"+m.String(), func(t *testing.T) {
				in := agentEvent(AgentHeartbeat, "a-1", "")
				in.traceparent = tt.in
				h, p := in.encode(t, m)
				ev, rej := Subjects{}.Decode(agentSubj, h, p)
				if m == binaryMode && strings.ContainsAny(tt.in, "\r\n") {
					// NATS cannot carry such a header; only structured mode can.
					return
				}
				wantCode(t, rej, "")
				if ev.TraceParent != tt.want {
					t.Fatalf("TraceParent = %q, want %q", ev.TraceParent, tt.want)
				}
			})
		}
	}
}

func TestParseInput(t *testing.T) {
	tests := []struct {
		prefix, subject string
		role            Role
		agent           string
		ok              bool
	}{
		{"", "presence.in.agent.a-1", RoleAgent, "a-1", true},
		{"", "presence.in.router.a-1", RoleRouter, "a-1", true},
		{"", "presence.in.system.a-1", RoleSystem, "a-1", true},
		{"", "presence.in.config", RoleConfig, "", true},
		{"presence", "presence.in.agent.x", RoleAgent, "x", true},
		{"acme.presence", "acme.presence.in.router.r_2", RoleRouter, "r_2", true},
		{"acme.presence", "acme.presence.in.config", RoleConfig, "", true},
		{"acme.presence", "presence.in.config", "", "", false},
		{"", "presencex.in.config", "", "", false},
		{"", "presence.in.config.x", "", "", false},
		{"", "presence.in.agent.", "", "", false},
		{"", "presence.in.agent", "", "", false},
		{"", "presence.in.agent.a.b", "", "", false},
		{"", "presence.in.status.a", "", "", false},
		{"", "presence.status.a", "", "", false},
		{"", "presence.in.", "", "", false},
		{"", "", "", "", false},
	}
	for _, tt := range tests {
		role, agent, err := Subjects{Prefix: tt.prefix}.ParseInput(tt.subject)
		if (err == nil) != tt.ok || role != tt.role || agent != tt.agent {
			t.Errorf("ParseInput(%q, %q) = %q, %q, %v; want %q, %q, ok=%v", tt.prefix, tt.subject, role, agent, err, tt.role, tt.agent, tt.ok)
		}
	}
}

func TestSubjects(t *testing.T) {
	for _, tt := range []struct {
		s    Subjects
		p    string
		name string
	}{{Subjects{}, "presence", "default"}, {Subjects{Prefix: "acme.presence"}, "acme.presence", "dotted"}} {
		t.Run(tt.name, func(t *testing.T) {
			got := map[string]string{
				tt.s.AgentIn("a-1"):    tt.p + ".in.agent.a-1",
				tt.s.RouterIn("a-1"):   tt.p + ".in.router.a-1",
				tt.s.SystemIn("a-1"):   tt.p + ".in.system.a-1",
				tt.s.Config():          tt.p + ".in.config",
				tt.s.Status("a-1"):     tt.p + ".status.a-1",
				tt.s.Rejected():        tt.p + ".rejected",
				tt.s.QueryAgent("a-1"): tt.p + ".query.agent.a-1",
				tt.s.QueryPresences():  tt.p + ".query.presences",
				tt.s.InputWildcard():   tt.p + ".in.>",
				tt.s.StatusWildcard():  tt.p + ".status.*",
			}
			for have, want := range got {
				if have != want {
					t.Errorf("got %q, want %q", have, want)
				}
			}
			for _, sub := range []string{tt.s.AgentIn("a-1"), tt.s.RouterIn("a-1"), tt.s.SystemIn("a-1"), tt.s.Config()} {
				if _, _, err := tt.s.ParseInput(sub); err != nil {
					t.Errorf("ParseInput(%q) of a built subject: %v", sub, err)
				}
			}
		})
	}
}

func TestValidIDs(t *testing.T) {
	long := strings.Repeat
	agent := map[string]bool{
		"a": true, "A-z_0-9": true, long("a", 128): true,
		"": false, long("a", 129): false, "a.b": false, "a b": false, "a*": false, "a>": false, "é": false, "a:b": false,
	}
	for id, want := range agent {
		if got := ValidAgentID(id); got != want {
			t.Errorf("ValidAgentID(%q) = %v", id, got)
		}
	}
	presence := map[string]bool{
		"a": true, "busy_dnd": true, "chat-2": true, long("p", 64): true,
		"": false, long("p", 65): false, "Busy": false, "a.b": false, "a b": false,
	}
	for id, want := range presence {
		if got := ValidPresenceID(id); got != want {
			t.Errorf("ValidPresenceID(%q) = %v", id, got)
		}
	}
	session := map[string]bool{
		"default": true, "desk:tab-1.A_b": true, long("s", 128): true,
		"": false, long("s", 129): false, "a b": false, "a/b": false, "a*": false,
	}
	for id, want := range session {
		if got := ValidSessionID(id); got != want {
			t.Errorf("ValidSessionID(%q) = %v", id, got)
		}
	}
}

// TestCheckURIRef: the fast path agrees with url.Parse on what it accepts.
func TestCheckURIRef(t *testing.T) {
	for _, s := range []string{"", "bench", "/agents/desktop", "//host/x", "a.b-c_d~e", "urn:x", "https://x/y?z=1",
		"%zz", "1http://x", "http://[::1", "a b", "http://x:port/", "\x7f", "//ho st"} {
		_, want := url.Parse(s)
		if got := checkURIRef(s); (got == nil) != (want == nil) {
			t.Errorf("%q: checkURIRef %v, url.Parse %v", s, got, want)
		}
	}
}
