-- The statements POST /v1/tickets runs (autocommit: the reads, then one writing statement).
-- (no API key or tenant lookup: the process caches both, for AUTH_CACHE_SECONDS and for good, so a request
-- runs none; the ceiling holds only what the endpoint sends per request)
-- queues/repository.get_for_new_ticket (the type's schemas are read only on a process's first use of a version)
SELECT q.id, q.tenant_id, q.name, q.description, q.allowed_type_definition_ids, q.wait_estimation_method,
       q.show_wait_time, q.max_wait_minutes, q.manual_wait_minutes, q.ticket_prefix, q.display_order, q.is_active,
       q.created_at, q.updated_at, te.timezone, td.id AS type_id, td.version AS type_version,
       td.is_active AS type_is_active
  FROM queues q JOIN tenants te ON te.id = q.tenant_id
  LEFT JOIN type_definitions td ON td.id = :type_id AND (td.tenant_id IS NULL OR td.tenant_id = :tenant_id)
 WHERE q.tenant_id = :tenant_id AND q.id = :create_queue;
-- queues/estimates: the line's pace is shared for a second (nobody leaves this line), so no departures read.
-- tickets/repository.insert_tickets for a lone create (creates arriving together in one process share one
-- statement: tickets/batching.py), one statement in autocommit (the queue's counter row is locked for this
-- one round trip). The app sends the new tickets as one JSON parameter; here it is built in place, to get
-- fresh ids per transaction.
WITH queued AS (
    SELECT pg_advisory_xact_lock(hashtextextended((:create_queue)::uuid::text, 0))
), x AS (
    SELECT * FROM jsonb_to_recordset(jsonb_build_array(jsonb_build_object(
        'n', 1, 'id', uuidv7(), 'history_id', uuidv7(), 'type_definition_id', (:type_id)::uuid, 'type_version', (:type_version)::int,
        'current_state', 'waiting', 'state_category', 'waiting', 'custom_data', '{"name": "Ann"}'::jsonb,
        'leaves', false, 'ready', false, 'done', false, 'cancelled', false, 'pace', 5.0)))
        AS x(n int, id uuid, history_id uuid, type_definition_id uuid, type_version int, current_state text,
             state_category text, customer_id uuid, references_ticket_id uuid, estimated_wait_minutes int,
             ttl_minutes int, custom_data jsonb, leaves bool, ready bool, done bool, cancelled bool, pace float8)
), types AS (
    SELECT td.id, td.version FROM type_definitions td WHERE td.id IN (SELECT x.type_definition_id FROM x) FOR SHARE
), fresh AS (
    SELECT WHERE NOT EXISTS (SELECT FROM x LEFT JOIN types ON types.id = x.type_definition_id
                              WHERE types.version IS DISTINCT FROM x.type_version)
), counter AS (
    INSERT INTO queue_day_counters AS c (tenant_id, queue_id, local_date, last_number)
    SELECT :tenant_id, :create_queue, (now() AT TIME ZONE 'UTC')::date, 1 FROM queued, fresh
    ON CONFLICT (tenant_id, queue_id, local_date) DO UPDATE SET last_number = c.last_number + excluded.last_number
    RETURNING local_date, last_number - 1 AS before
), base AS (
    SELECT c.local_date, c.before, queue_waiting_count(:tenant_id, :create_queue) AS waiting FROM counter c
), placed AS (
    SELECT x.*, b.local_date, b.before + x.n AS number,
           CASE WHEN x.state_category = 'waiting' THEN b.waiting
               + count(*) FILTER (WHERE x.state_category = 'waiting') OVER (ORDER BY x.n) END AS position
      FROM x, base b
), t AS (
    INSERT INTO tickets (tenant_id, id, queue_id, origin_queue_id, type_definition_id, number, display_code, local_date,
                         current_state, state_category, customer_id, references_ticket_id,
                         estimated_wait_minutes, original_estimated_wait_minutes, ttl_minutes, expires_at,
                         custom_data, started_at, departed_queue_id, actual_wait_minutes, ready_at, completed_at,
                         cancelled_at)
    SELECT :tenant_id, p.id, :create_queue, :create_queue, p.type_definition_id, p.number, 'B' || lpad(p.number::text, greatest(3, length(p.number::text)), '0'),
           p.local_date, p.current_state, p.state_category, p.customer_id, p.references_ticket_id,
           p.estimated_wait_minutes, coalesce(p.estimated_wait_minutes, floor(p.position * p.pace + 0.5)::int),
           p.ttl_minutes, now() + make_interval(mins => p.ttl_minutes), p.custom_data,
           CASE WHEN p.leaves THEN now() END, CASE WHEN p.leaves THEN (:create_queue)::uuid END, CASE WHEN p.leaves THEN 0 END,
           CASE WHEN p.ready THEN now() END,
           CASE WHEN p.done THEN now() END, CASE WHEN p.cancelled THEN now() END
      FROM placed p ORDER BY p.n
    RETURNING *
), h AS (
    INSERT INTO ticket_history (tenant_id, id, ticket_id, previous_state, new_state)
    SELECT t.tenant_id, p.history_id, t.id, NULL, t.current_state FROM t JOIN placed p ON p.id = t.id ORDER BY t.number
), e AS (
    INSERT INTO events (tenant_id, type, queue_id, ticket_id, data)
    SELECT tenant_id, 'ticket.created', queue_id, id, jsonb_build_object(
               'display_code', display_code, 'number', number, 'current_state', current_state,
               'state_category', state_category, 'type_definition_id', type_definition_id, 'version', version)
      FROM t ORDER BY number
)
SELECT t.id, p.position FROM t JOIN placed p ON p.id = t.id ORDER BY t.number;
