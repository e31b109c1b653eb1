"""Positions counted with a plan made once per connection, and a batch's lines counted in one call.

`tickets_waiting_ahead()` (0013) and `tickets_waiting_ahead_each()` (0014) count the waiting tickets in a
range of the line's index bounded by a sort key. PL/pgSQL plans a query with parameters for the values of
each call (a custom plan) until the generic plan looks no worse than the custom ones on average; for
`sort_key < $3` it never does (the generic estimate is a third of the queue), so every call planned its
count again: 41 plans for 40 calls in `pg_stat_statements`, about half of a single read's PostgreSQL time.
The plan does not depend on the values: it is the same range scan of `tickets_waiting_line_idx` for any
key. `plan_cache_mode = force_generic_plan` on the functions plans the count once per connection. The same
held for `queue_waiting_count()` (0010), which a create's statement calls for the line's length: 4,514 plans
for 4,494 calls under a create load, ~67 µs of planning to ~20 µs of execution each; it gets the same
setting.

`tickets_waiting_ahead_lines(tenant, queue_ids[], sort_keys[])` takes over from
`tickets_waiting_ahead_each()`: the same single pass over each line, for the pairs (queue, key) of every
line of a batch of reads in one call, where the batch's statement called the function once per line (each
call with its own set-up, and its own plan until now). `tickets_waiting_ahead_each()` stays, planned once
too, for the processes of the previous build that still call it during a rolling upgrade; this build no
longer does, and a later migration can drop it.

The same wall as 0013 and 0014: it counts as the tables' owner (SECURITY DEFINER, so the sort key can bound
the index scan under row security), answers only for the tenant the connection is scoped to (or the
`system` scope) and nothing for any other, and returns counts, never rows.

Revision ID: 0016
Revises: 0015
"""

from virtualq.migrations.sql import run_script

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    ALTER FUNCTION tickets_waiting_ahead(uuid, uuid, numeric, uuid) SET plan_cache_mode = force_generic_plan;
    ALTER FUNCTION tickets_waiting_ahead_each(uuid, uuid, numeric[]) SET plan_cache_mode = force_generic_plan;
    ALTER FUNCTION queue_waiting_count(uuid, uuid) SET plan_cache_mode = force_generic_plan;
    CREATE FUNCTION tickets_waiting_ahead_lines(p_tenant_id uuid, p_queue_ids uuid[], p_sort_keys numeric[])
        RETURNS TABLE (queue_id uuid, waiting_key numeric, ahead bigint)
        LANGUAGE plpgsql STABLE SECURITY DEFINER
        -- Nothing the caller puts on its search path can stand in for a table or an operator here.
        SET search_path = pg_catalog, pg_temp
        SET plan_cache_mode = force_generic_plan AS $$
    DECLARE
        scope text := current_setting('virtualq.tenant_id', true);
    BEGIN
        IF scope IS DISTINCT FROM 'system' AND p_tenant_id IS DISTINCT FROM nullif(scope, '')::uuid THEN
            RETURN;
        END IF;
        -- Each key's own stretch of its line, [the key before it in that line, the key): two bounds on the
        -- index, so the stretches of one line together read it once, up to its last key.
        RETURN QUERY
            SELECT k.queue_id, k.sort_key,
                   (sum(stretch.n) OVER (PARTITION BY k.queue_id ORDER BY k.sort_key))::bigint
              FROM (SELECT d.queue_id, d.sort_key,
                           lag(d.sort_key, 1, '-Infinity') OVER (PARTITION BY d.queue_id ORDER BY d.sort_key)
                               AS previous
                      FROM (SELECT DISTINCT u.queue_id, u.sort_key
                              FROM unnest(p_queue_ids, p_sort_keys) AS u(queue_id, sort_key)) d) k
             CROSS JOIN LATERAL (
                 SELECT count(*) AS n FROM public.tickets w
                  WHERE w.tenant_id = p_tenant_id AND w.queue_id = k.queue_id AND w.state_category = 'waiting'
                    AND w.sort_key >= k.previous AND w.sort_key < k.sort_key) stretch;
    END $$;
    REVOKE ALL ON FUNCTION tickets_waiting_ahead_lines(uuid, uuid[], numeric[]) FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION tickets_waiting_ahead_lines(uuid, uuid[], numeric[]) TO virtualq_app;
    """)


def downgrade() -> None:
    run_script("""
    DROP FUNCTION tickets_waiting_ahead_lines(uuid, uuid[], numeric[]);
    ALTER FUNCTION queue_waiting_count(uuid, uuid) RESET plan_cache_mode;
    ALTER FUNCTION tickets_waiting_ahead_each(uuid, uuid, numeric[]) RESET plan_cache_mode;
    ALTER FUNCTION tickets_waiting_ahead(uuid, uuid, numeric, uuid) RESET plan_cache_mode;
    """)
