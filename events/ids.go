package events

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"time"
)

// StatusID is the CloudEvents id of the status change that cause made to agentID at
// version. Deriving it rather than drawing it at random is what makes a redelivered
// cause republish the same id, which JetStream then drops via Nats-Msg-Id.
func StatusID(cause Cause, agentID string, version uint64) string {
	var v [20]byte
	return hashID("status", cause.Source, cause.ID, agentID, string(strconv.AppendUint(v[:0], version, 10)))
}

// RejectedID is the CloudEvents id of the dead letter for the input message at seq in
// stream, so redelivering a rejected message cannot publish two.
func RejectedID(stream string, seq uint64) string {
	return stream + "-" + strconv.FormatUint(seq, 10)
}

// ExpiryCauseID is the id of the synthetic session.expired cause for one lease: every
// replica that notices the same expiry derives the same id, so only one applies.
func ExpiryCauseID(agentID, sessionID string, deadline time.Time) string {
	var v [20]byte
	return hashID("expiry", agentID, sessionID, string(strconv.AppendInt(v[:0], deadline.UnixNano(), 10)))
}

// hashID hashes the parts separated by 0 bytes, which CloudEvents strings and the
// validated ids cannot contain, so different parts never hash alike. The leading
// tag keeps a status id from ever equalling an expiry id.
func hashID(tag string, parts ...string) string {
	h := sha256.New()
	h.Write([]byte(tag))
	for _, p := range parts {
		h.Write([]byte{0})
		h.Write([]byte(p))
	}
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0])[:16])
}
