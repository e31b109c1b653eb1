-- The statements GET /v1/tickets/{id} runs (see src/virtualq/*/repository.py), for a ticket anywhere in the
-- line of 1,000 (get_ticket; line_offset 0), or anywhere in 8 lines of 125 (get_ticket_8_queues; line_offset
-- 1000), as the HTTP clients read them: its position counts the waiting tickets ahead of it in its line.
\set n random(0, 999) + :line_offset
-- (no API key or tenant lookup: the process caches both, for AUTH_CACHE_SECONDS and for good, so a request
-- runs none; the ceiling holds only what the endpoint sends per request)
-- tickets/repository.get_ticket (the ticket's id found by a key lookup in a 1,000-row table)
SELECT t.id, t.tenant_id, t.queue_id, t.type_definition_id, t.number, t.display_code,
       t.current_state, t.state_category, t.customer_id, t.employee_id, t.references_ticket_id,
       t.estimated_wait_minutes, t.original_estimated_wait_minutes, t.actual_wait_minutes, t.ttl_minutes,
       t.expires_at, t.escalated_at, t.custom_data, t.started_at, t.ready_at, t.completed_at, t.cancelled_at, t.counter,
       t.version, t.created_at, t.updated_at, coalesce(current_setting('virtualq.public_base_url', true), '') || '/t/' || t.id || '?token=' || t.public_token AS customer_page,
       CASE WHEN t.state_category = 'waiting' THEN
         tickets_waiting_ahead(t.tenant_id, t.queue_id, t.sort_key) + 1 END AS position
  FROM tickets t
 WHERE t.tenant_id = :tenant_id
   AND t.id = (SELECT ticket_id FROM bench_line WHERE n = :n);
-- (the line's pace comes from the shared per-process cache: no estimate queries)
