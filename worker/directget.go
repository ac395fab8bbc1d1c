package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// errNoMultiLast is returned by lastMessages from a server that reads no
// multi_last (older than 2.11: the request looks empty to it).
var errNoMultiLast = errors.New("the server answers no multi-subject direct gets")

// multiLastMax is how many subjects one request names: the server answers at
// most 1 024 messages per request.
const multiLastMax = 1000

// lastMessages asks the stream, in one direct get (nats-server 2.11 or newer),
// for the last message of each subject and hands each to fn. It returns the
// stream's last sequence when the server read it (every message up to there is
// in the answer's reach) and false when none of the subjects has a message, as
// the server then does not say.
func lastMessages(ctx context.Context, nc *nats.Conn, api, stream string, subjects []string, fn func(*nats.Msg) error) (uint64, bool, error) {
	req, err := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
	}{subjects})
	if err != nil {
		return 0, false, err
	}
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return 0, false, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(api+"DIRECT.GET."+stream, inbox, req); err != nil {
		return 0, false, err
	}
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return 0, false, err
		}
		switch status := m.Header.Get("Status"); status {
		case "":
			if err := fn(m); err != nil {
				return 0, false, err
			}
		case "204": // end of the answer
			upTo, err := strconv.ParseUint(m.Header.Get("Nats-UpTo-Sequence"), 10, 64)
			if err != nil {
				return 0, false, errNoMultiLast
			}
			return upTo, true, nil
		case "404":
			return 0, false, nil
		case "400", "408":
			return 0, false, errNoMultiLast
		case "503":
			return 0, false, nats.ErrNoResponders
		default:
			return 0, false, fmt.Errorf("direct get: status %s %s", status, m.Header.Get("Description"))
		}
	}
}

// messageSeq is the stream sequence of a direct get's answer.
func messageSeq(m *nats.Msg) (uint64, error) {
	seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("direct get: sequence: %w", err)
	}
	return seq, nil
}
