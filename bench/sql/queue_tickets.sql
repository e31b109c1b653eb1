-- The statements GET /v1/queues/{id}/tickets?limit=100 runs.
-- (no API key or tenant lookup: the process caches both, for AUTH_CACHE_SECONDS and for good, so a request
-- runs none; the ceiling holds only what the endpoint sends per request)
-- queues/repository.get
SELECT id, tenant_id, name, description, allowed_type_definition_ids, wait_estimation_method, show_wait_time,
       max_wait_minutes, manual_wait_minutes, ticket_prefix, display_order, is_active, created_at, updated_at
  FROM queues WHERE tenant_id = :tenant_id AND id = :line_queue;
-- tickets/repository.queue_tickets
WITH head AS (
    (SELECT t.*, 0 AS grp FROM tickets t
      WHERE t.tenant_id = :tenant_id AND t.queue_id = :line_queue AND t.state_category = 'waiting'
      ORDER BY t.sort_key LIMIT 100)
    UNION ALL
    (SELECT t.*, 1 AS grp FROM tickets t
      WHERE t.tenant_id = :tenant_id AND t.queue_id = :line_queue AND t.state_category IN ('in_service', 'ready')
      ORDER BY t.sort_key LIMIT 100)
), ranked AS (
    SELECT t.*, row_number() OVER (ORDER BY t.grp, t.sort_key) AS rank FROM head t
)
SELECT t.id, t.tenant_id, t.queue_id, t.type_definition_id, t.number, t.display_code,
       t.current_state, t.state_category, t.customer_id, t.employee_id, t.references_ticket_id,
       t.estimated_wait_minutes, t.original_estimated_wait_minutes, t.actual_wait_minutes, t.ttl_minutes,
       t.expires_at, t.escalated_at, t.custom_data, t.started_at, t.ready_at, t.completed_at, t.cancelled_at, t.counter,
       t.version, t.created_at, t.updated_at, coalesce(current_setting('virtualq.public_base_url', true), '') || '/t/' || t.id || '?token=' || t.public_token AS customer_page,
       CASE WHEN t.grp = 0 THEN t.rank END AS position,
       (SELECT count(*) FROM tickets c WHERE c.tenant_id = :tenant_id AND c.queue_id = :line_queue
           AND c.state_category NOT IN ('done', 'cancelled')) AS _total
  FROM ranked t
 ORDER BY t.rank
 LIMIT 100 OFFSET 0;
-- (the line's pace comes from the shared per-process cache: no estimate queries)
