-- The trace context of the send that queued a message (a W3C `traceparent`, NULL when the
-- sending replica was not exporting traces), so that the push of the message, whichever
-- replica drains it and however long after, and its client_ack are spans of the send's
-- trace. Nullable and without a default: adding it rewrites nothing, and a broker of the
-- previous release, which neither writes nor reads it, keeps working on the same table.
ALTER TABLE message_queue ADD COLUMN trace_context text;
