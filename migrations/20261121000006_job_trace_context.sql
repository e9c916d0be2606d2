-- W3C trace context (traceparent/tracestate) of the span that enqueued the job, so a webhook →
-- job → follow-up chain is one trace. NULL when no trace was active.
ALTER TABLE fleet_jobs ADD COLUMN trace_context jsonb;
