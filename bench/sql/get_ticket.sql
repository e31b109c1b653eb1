-- The statements GET /v1/tickets/{id} runs (see src/virtualq/*/repository.py).
-- auth/repository.find_usable_key and auth/repository.tenant_account: every authenticated tenant request.
SELECT k.id, k.scope, k.role, k.account_id, k.tenant_id, k.employee_id,
       coalesce(a.is_active, true) AND coalesce(t.is_active, true) AS owner_active
  FROM api_keys k LEFT JOIN accounts a ON a.id = k.account_id LEFT JOIN tenants t ON t.id = k.tenant_id
 WHERE k.key_hash = decode(:key_hash, 'hex') AND k.revoked_at IS NULL;
SELECT account_id FROM tenants WHERE id = :tenant_id;
-- tickets/repository.get_ticket
SELECT t.id, t.tenant_id, t.queue_id, t.type_definition_id, t.number, t.display_code,
       t.current_state, t.state_category, t.customer_id, t.employee_id, t.references_ticket_id,
       t.estimated_wait_minutes, t.original_estimated_wait_minutes, t.actual_wait_minutes, t.ttl_minutes,
       t.expires_at, t.escalated_at, t.custom_data, t.started_at, t.ready_at, t.completed_at, t.cancelled_at,
       t.version, t.created_at, t.updated_at,
       CASE WHEN t.state_category = 'waiting' THEN
         (SELECT count(*) + 1 FROM tickets w WHERE w.tenant_id = t.tenant_id AND w.queue_id = t.queue_id
             AND w.state_category = 'waiting' AND w.sort_key < t.sort_key) END AS position
  FROM tickets t WHERE t.tenant_id = :tenant_id AND t.id = :ticket_id;
-- (the line's pace comes from the shared per-process cache: no estimate queries)
