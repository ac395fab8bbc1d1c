package worker

import (
	"context"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// startSpan opens the span of one traced input event and gives the event the
// span's traceparent, so the status events it causes are children of it in the
// producer's trace. With no tracer provider configured (the no-op tracer) the
// span is the input's own context and the traceparent goes on unchanged.
func (w *Worker) startSpan(it *item, p int) trace.Span {
	if it.ev.TraceParent == "" {
		return nil
	}
	var tc propagation.TraceContext
	parent := tc.Extract(context.Background(), propagation.MapCarrier{"traceparent": it.ev.TraceParent})
	ctx, span := w.cfg.Tracer.Start(parent, "presenced "+string(it.ev.Type),
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", it.subject),
			attribute.String("cloudevents.event_id", it.ev.ID),
			attribute.String("cloudevents.event_source", it.ev.Source),
			attribute.String("cloudevents.event_type", string(it.ev.Type)),
			attribute.String("presence.agent_id", it.ev.AgentID),
			attribute.String("presence.partition", strconv.Itoa(p)),
			attribute.Int64("presence.input_seq", int64(it.ev.Seq)),
		))
	carrier := propagation.MapCarrier{}
	tc.Inject(ctx, carrier)
	if tp := carrier["traceparent"]; tp != "" {
		it.ev.TraceParent = tp
	}
	return span
}

// endSpans closes a segment's spans with its outcome.
func endSpans(spans []trace.Span, err error) {
	for _, s := range spans {
		if err != nil {
			s.RecordError(err)
			s.SetStatus(codes.Error, "not finished; the batch is retried")
		}
		s.End()
	}
}
