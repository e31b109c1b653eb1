-- The statements POST /v1/tickets/{id}/transition runs (each in autocommit, as the app does without an
-- Idempotency-Key); each client owns one ticket, as each HTTP worker does, and toggles it between waiting
-- and serving.
-- (no API key or tenant lookup: the process caches both, for AUTH_CACHE_SECONDS and for good, so a request
-- runs none; the ceiling holds only what the endpoint sends per request)
-- tickets/repository.current_ticket, only on a client's first transaction: afterwards the app starts from
-- what its own last change of the ticket left (service.remember_written), as this script starts from the
-- answer of its last update (no lock; the compiled type is cached, so no schemas)
-- (the client's own ticket is looked up inside the statement, not in a round trip the app does not make)
-- (bench/run.py starts every client with version 0: no ticket has it)
\if :version = 0
SELECT t.id AS ticket_id, t.employee_id, t.current_state, t.state_category, t.type_definition_id, t.queue_id,
       t.version, t.created_at, t.sort_key, td.version AS type_version
  FROM tickets t JOIN type_definitions td ON td.id = t.type_definition_id
 WHERE t.tenant_id = :tenant_id AND t.id = (SELECT ticket_id FROM bench_clients WHERE client_id = :client_id) \gset
\endif
-- tickets/repository.apply_transition
WITH o AS (
    SELECT employee_id FROM tickets WHERE tenant_id = :tenant_id AND id = :ticket_id
), t AS (
    UPDATE tickets SET current_state = CASE current_state WHEN 'waiting' THEN 'serving' ELSE 'waiting' END,
           state_category = CASE state_category WHEN 'waiting' THEN 'in_service' ELSE 'waiting' END,
           employee_id = coalesce(NULL::uuid, employee_id),
           started_at = CASE WHEN state_category = 'waiting' AND started_at IS NULL THEN now() ELSE started_at END,
           departed_queue_id = CASE WHEN state_category = 'waiting' AND started_at IS NULL THEN queue_id ELSE departed_queue_id END,
           actual_wait_minutes = CASE WHEN state_category = 'waiting' AND started_at IS NULL
               THEN round(extract(epoch FROM now() - created_at) / 60)::int ELSE actual_wait_minutes END,
           ready_at = ready_at, completed_at = completed_at, cancelled_at = cancelled_at,
           counter = CASE WHEN CASE state_category WHEN 'waiting' THEN 'in_service' ELSE 'waiting' END = 'waiting'
                          THEN NULL ELSE coalesce(NULL::text, counter) END,
           version = version + 1, updated_at = now()
     WHERE tenant_id = :tenant_id AND id = :ticket_id AND version = :version
       AND EXISTS (SELECT 1 FROM type_definitions td
                    WHERE td.id = tickets.type_definition_id AND td.version = :type_version FOR SHARE)
    RETURNING *
), h AS (
    INSERT INTO ticket_history (tenant_id, id, ticket_id, previous_state, new_state, transition, employee_id, notes)
    SELECT tenant_id, uuidv7(), id, 'x', current_state, 'serve', NULL, NULL FROM t
), e AS (
    INSERT INTO events (tenant_id, type, queue_id, ticket_id, data)
    SELECT tenant_id, 'ticket.state_changed', queue_id, id,
           jsonb_build_object('display_code', display_code, 'number', number, 'current_state', current_state,
                              'state_category', state_category, 'version', version, 'counter', counter) FROM t
    UNION ALL
    SELECT tenant_id, 'ticket.assigned', queue_id, id,
           jsonb_build_object('display_code', display_code, 'employee_id', employee_id,
                              'previous_employee_id', (SELECT employee_id FROM o))
      FROM t WHERE employee_id IS DISTINCT FROM (SELECT employee_id FROM o) AND employee_id IS NOT NULL
)
SELECT t.id, t.tenant_id, t.queue_id, t.type_definition_id, t.number, t.display_code,
       t.current_state, t.state_category, t.customer_id, t.employee_id, t.references_ticket_id,
       t.estimated_wait_minutes, t.original_estimated_wait_minutes, t.actual_wait_minutes, t.ttl_minutes,
       t.expires_at, t.escalated_at, t.custom_data, t.started_at, t.ready_at, t.completed_at, t.cancelled_at, t.counter,
       t.version, t.created_at, t.updated_at,
       CASE WHEN t.state_category = 'waiting' THEN
         tickets_waiting_ahead(t.tenant_id, t.queue_id, t.sort_key) + 1 END AS position, 'x'::text AS previous_state FROM t \gset
-- queues/estimates.Estimator: the queue's settings and recent departures are not read per request: the
-- line's pace is shared for a second and dropped only by a first departure (none in this toggling load).
