-- The statements POST /v1/queues/{id}/call-next runs (one transaction), draining a copy of the drain queue.
-- auth/repository.find_usable_key and auth/repository.tenant_account: every authenticated tenant request.
SELECT k.id, k.scope, k.role, k.account_id, k.tenant_id, k.employee_id,
       coalesce(a.is_active, true) AND coalesce(t.is_active, true) AS owner_active
  FROM api_keys k LEFT JOIN accounts a ON a.id = k.account_id LEFT JOIN tenants t ON t.id = k.tenant_id
 WHERE k.key_hash = decode(:key_hash, 'hex') AND k.revoked_at IS NULL;
SELECT account_id FROM tenants WHERE id = :tenant_id;
BEGIN;
-- queues/repository.get
SELECT id, tenant_id, name, description, allowed_type_definition_ids, wait_estimation_method, show_wait_time,
       max_wait_minutes, manual_wait_minutes, ticket_prefix, display_order, is_active, created_at, updated_at
  FROM queues WHERE tenant_id = :tenant_id AND id = :drain_queue;
-- tickets/line_repository.lock_first_waiting
SELECT t.id AS called_id, t.employee_id, t.current_state, t.state_category, t.type_definition_id,
       t.queue_id, t.version, t.created_at, t.sort_key, td.version AS type_version, td.fsm_schema,
       td.custom_fields_schema
  FROM tickets t JOIN type_definitions td ON td.id = t.type_definition_id
 WHERE t.tenant_id = :tenant_id AND t.queue_id = :drain_queue AND t.state_category = 'waiting'
 ORDER BY t.sort_key
 LIMIT 1
   FOR UPDATE OF t SKIP LOCKED FOR SHARE OF td \gset
-- tickets/repository.apply_transition
WITH t AS (
    UPDATE tickets SET current_state = 'serving', state_category = 'in_service',
           employee_id = coalesce(NULL::uuid, employee_id),
           started_at = CASE WHEN started_at IS NULL THEN now() ELSE started_at END,
           actual_wait_minutes = CASE WHEN started_at IS NULL
               THEN round(extract(epoch FROM now() - created_at) / 60)::int ELSE actual_wait_minutes END,
           ready_at = ready_at, completed_at = completed_at, cancelled_at = cancelled_at,
           version = version + 1, updated_at = now()
     WHERE tenant_id = :tenant_id AND id = :called_id
    RETURNING *
), h AS (
    INSERT INTO ticket_history (tenant_id, id, ticket_id, previous_state, new_state, transition, employee_id, notes)
    SELECT tenant_id, uuidv7(), id, 'waiting', current_state, 'serve', NULL, NULL FROM t
), e AS (
    INSERT INTO events (tenant_id, type, queue_id, ticket_id, data)
    SELECT tenant_id, 'ticket.state_changed', queue_id, id,
           jsonb_build_object('display_code', display_code, 'number', number, 'current_state', current_state,
                              'state_category', state_category, 'version', version) FROM t
)
SELECT t.id, t.tenant_id, t.queue_id, t.type_definition_id, t.number, t.display_code,
       t.current_state, t.state_category, t.customer_id, t.employee_id, t.references_ticket_id,
       t.estimated_wait_minutes, t.original_estimated_wait_minutes, t.actual_wait_minutes, t.ttl_minutes,
       t.expires_at, t.escalated_at, t.custom_data, t.started_at, t.ready_at, t.completed_at, t.cancelled_at,
       t.version, t.created_at, t.updated_at, NULL::bigint AS position, 'waiting'::text AS previous_state FROM t;
-- queues/estimates.Estimator (the ticket is no longer waiting, so no departures are loaded)
SELECT id, wait_estimation_method, manual_wait_minutes, show_wait_time
  FROM queues WHERE tenant_id = :tenant_id AND id = ANY(ARRAY[:drain_queue]::uuid[]);
COMMIT;
