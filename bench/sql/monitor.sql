-- The statements GET /v1/queues/{id}/monitor runs, on the line of 1,000 waiting tickets.
-- (no API key or tenant lookup: the process caches both, for AUTH_CACHE_SECONDS and for good, so a request
-- runs none; the ceiling holds only what the endpoint sends per request)
-- queues/repository.get
SELECT id, tenant_id, name, description, allowed_type_definition_ids, wait_estimation_method, show_wait_time,
       max_wait_minutes, manual_wait_minutes, ticket_prefix, display_order, is_active, created_at, updated_at
  FROM queues WHERE tenant_id = :tenant_id AND id = :line_queue;
-- queues/monitor.MONITOR_SQL
SELECT * FROM (
    SELECT t.id, t.queue_id, t.type_definition_id, t.display_code, t.current_state, t.state_category,
           t.estimated_wait_minutes, t.custom_data, t.sort_key, t.counter,
           CASE WHEN t.state_category = 'waiting'
                THEN row_number() OVER (PARTITION BY t.state_category = 'waiting' ORDER BY t.sort_key)
           END AS position,
           c.fname, c.lname,
           coalesce((SELECT jsonb_agg(jsonb_build_object(
                                'name', coalesce(i.external_item_name, td.type_name), 'quantity', i.quantity)
                            ORDER BY i.created_at, i.id)
                       FROM ticket_items i JOIN type_definitions td ON td.id = i.item_type_definition_id
                      WHERE i.tenant_id = t.tenant_id AND i.ticket_id = t.id AND NOT i.is_deleted),
                    '[]'::jsonb) AS items
      FROM tickets t
      LEFT JOIN customers c ON c.id = t.customer_id
     WHERE t.tenant_id = :tenant_id AND t.queue_id = :line_queue
       AND t.state_category IN ('waiting', 'in_service', 'ready')
) shown
WHERE NOT EXISTS (
    SELECT 1 FROM unnest('{}'::text[], '{}'::text[]) AS x(field, value)
     WHERE shown.custom_data ->> x.field = x.value)
ORDER BY sort_key;
-- (the line's pace comes from the shared per-process cache: no estimate queries)
