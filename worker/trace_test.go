package worker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/worker"
)

// TestTraceContext: a status event caused by a traced input continues the
// input's trace, as a child of the worker's span for that input; without a
// tracer the input's traceparent goes on unchanged.
func TestTraceContext(t *testing.T) {
	t.Parallel()
	const (
		traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
		input   = "00-" + traceID + "-00f067aa0ba902b7-01"
	)
	rec := endedSpans(make(chan sdktrace.ReadOnlySpan, 64))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })

	e := newEnv(t)
	e.startWorker(func(c *worker.Config) { c.Tracer = tp.Tracer("test") })
	m := e.input(events.AgentLogin, "tr-1", sess{})
	m.Header.Set("ce-traceparent", input)
	e.publishMsg(m)
	st := e.waitVersion("tr-1", 1)

	parts := strings.Split(st.TraceParent, "-")
	if len(parts) != 4 || parts[1] != traceID {
		t.Fatalf("status traceparent %q is not in the input's trace %s", st.TraceParent, traceID)
	}
	// The span ends once the batch is acknowledged, a moment after the status is out.
	var span sdktrace.ReadOnlySpan
	for span == nil {
		select {
		case s := <-rec:
			if s.SpanContext().SpanID().String() == parts[2] {
				span = s
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the status's parent span %s never ended", parts[2])
		}
	}
	if got := span.Parent().SpanID().String(); got != "00f067aa0ba902b7" || !span.Parent().IsRemote() {
		t.Fatalf("worker span's parent %s (remote %v), want the input's span", got, span.Parent().IsRemote())
	}
	if span.Name() != "presenced agent.login" {
		t.Fatalf("span name %q", span.Name())
	}
	attrs := map[string]string{}
	for _, kv := range span.Attributes() {
		attrs[string(kv.Key)] = kv.Value.Emit()
	}
	if attrs["presence.agent_id"] != "tr-1" || attrs["cloudevents.event_id"] != m.Header.Get("ce-id") {
		t.Fatalf("span attributes %v", attrs)
	}

	// Without a tracer: carried unchanged.
	e2 := newEnv(t)
	e2.startWorker()
	m2 := e2.input(events.AgentLogin, "tr-2", sess{})
	m2.Header.Set("ce-traceparent", input)
	e2.publishMsg(m2)
	if st := e2.waitVersion("tr-2", 1); st.TraceParent != input {
		t.Fatalf("untraced worker: status traceparent %q, want the input's %q", st.TraceParent, input)
	}
}

// endedSpans hands every ended span to the test.
type endedSpans chan sdktrace.ReadOnlySpan

func (c endedSpans) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (c endedSpans) OnEnd(s sdktrace.ReadOnlySpan)                   { c <- s }
func (c endedSpans) Shutdown(context.Context) error                  { return nil }
func (c endedSpans) ForceFlush(context.Context) error                { return nil }
