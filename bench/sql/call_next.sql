-- The statements POST /v1/queues/{id}/call-next runs (autocommit, as the app does without an
-- Idempotency-Key), draining a copy of the drain queue; the plan (type version, waiting state -> transition)
-- is the one the app has learnt for the bench type: waiting --serve--> serving.
-- (no API key or tenant lookup: the process caches both, for AUTH_CACHE_SECONDS and for good, so a request
-- runs none; the ceiling holds only what the endpoint sends per request)
-- tickets/line_repository.CALL_FIRST_WAITING
WITH q AS (
    SELECT id FROM queues WHERE tenant_id = :tenant_id AND id = :drain_queue
), c AS (
    SELECT t.id, t.type_definition_id, t.current_state, t.employee_id, td.version AS type_version
      FROM tickets t JOIN type_definitions td ON td.id = t.type_definition_id
     WHERE t.tenant_id = :tenant_id AND t.queue_id = :drain_queue AND t.state_category = 'waiting'
     ORDER BY t.sort_key
     LIMIT 1
       FOR UPDATE OF t SKIP LOCKED FOR SHARE OF td
), m AS (
    SELECT c.id AS ticket_id, c.employee_id AS previous_employee_id, p.*
      FROM c JOIN unnest(ARRAY[:type_id]::uuid[], ARRAY[1], ARRAY['waiting'], ARRAY['serve'], ARRAY['serving'],
                         ARRAY['in_service'], ARRAY[true], ARRAY[false], ARRAY[false], ARRAY[false])
                  AS p(type_id, type_version, from_state, via, to_state, to_category,
                       leaves, ready, done, cancelled)
        ON p.type_id = c.type_definition_id AND p.type_version = c.type_version
       AND p.from_state = c.current_state
), t AS (
    UPDATE tickets SET current_state = m.to_state, state_category = m.to_category,
           employee_id = coalesce(NULL::uuid, employee_id),
           started_at = CASE WHEN m.leaves AND started_at IS NULL THEN now() ELSE started_at END,
           departed_queue_id = CASE WHEN m.leaves AND started_at IS NULL THEN queue_id ELSE departed_queue_id END,
           actual_wait_minutes = CASE WHEN m.leaves AND started_at IS NULL
               THEN round(extract(epoch FROM now() - created_at) / 60)::int ELSE actual_wait_minutes END,
           ready_at = CASE WHEN m.ready THEN now() ELSE ready_at END,
           completed_at = CASE WHEN m.done THEN now() ELSE completed_at END,
           cancelled_at = CASE WHEN m.cancelled THEN now() ELSE cancelled_at END,
           counter = CASE WHEN m.to_category = 'waiting' THEN NULL ELSE coalesce(NULL::text, counter) END,
           version = version + 1, updated_at = now()
      FROM m
     WHERE tickets.tenant_id = :tenant_id AND tickets.id = m.ticket_id
    RETURNING tickets.*, m.via, m.from_state, m.previous_employee_id
), h AS (
    INSERT INTO ticket_history (tenant_id, id, ticket_id, previous_state, new_state, transition,
                                employee_id, notes)
    SELECT tenant_id, uuidv7(), id, from_state, current_state, via, NULL, NULL FROM t
), d AS (
    SELECT tenant_id, queue_id, id, state_category, display_code, number, current_state, type_definition_id,
           version, employee_id, previous_employee_id, jsonb_build_object(
               'display_code', display_code, 'number', number, 'current_state', current_state,
               'state_category', state_category, 'type_definition_id', type_definition_id,
               'version', version, 'previous_state', from_state, 'transition', via, 'counter', counter) AS data
      FROM t
), e AS (
    INSERT INTO events (tenant_id, type, queue_id, ticket_id, data)
    SELECT tenant_id, 'ticket.state_changed', queue_id, id, data FROM d
    UNION ALL
    SELECT tenant_id, CASE state_category WHEN 'done' THEN 'ticket.completed' ELSE 'ticket.cancelled' END,
           queue_id, id, data
      FROM d WHERE state_category IN ('done', 'cancelled')
    UNION ALL
    SELECT tenant_id, 'ticket.assigned', queue_id, id,
           jsonb_build_object('display_code', display_code, 'number', number, 'current_state', current_state,
                              'state_category', state_category, 'type_definition_id', type_definition_id,
                              'version', version, 'employee_id', employee_id,
                              'previous_employee_id', previous_employee_id)
      FROM d WHERE employee_id IS DISTINCT FROM previous_employee_id AND employee_id IS NOT NULL
)
SELECT EXISTS (SELECT 1 FROM q) AS queue_found, c.id AS candidate_id, c.type_definition_id AS candidate_type,
       c.type_version AS candidate_type_version, c.current_state AS candidate_state,
       t.id, t.tenant_id, t.queue_id, t.type_definition_id, t.number, t.display_code,
       t.current_state, t.state_category, t.customer_id, t.employee_id, t.references_ticket_id,
       t.estimated_wait_minutes, t.original_estimated_wait_minutes, t.actual_wait_minutes, t.ttl_minutes,
       t.expires_at, t.escalated_at, t.custom_data, t.started_at, t.ready_at, t.completed_at, t.cancelled_at, t.counter,
       t.version, t.created_at, t.updated_at, coalesce(current_setting('virtualq.public_base_url', true), '') || '/t/' || t.id || '?token=' || t.public_token AS customer_page,
       NULL::bigint AS position, t.from_state AS previous_state
  FROM (SELECT 1) AS one LEFT JOIN c ON true LEFT JOIN t ON true;
