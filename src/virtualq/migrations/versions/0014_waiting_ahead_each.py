"""The positions of several waiting tickets of one queue counted in one pass over its line.

A statement reading a batch of tickets (tickets/reads.py) counted each waiting ticket's position on its
own: k tickets of one line read k ranges of `tickets_waiting_line_idx`, each from the head of the line to
the ticket, about k * (line length / 2) index entries for tickets spread along the line.

`tickets_waiting_ahead_each()` takes the sort keys of the batch's waiting tickets of a queue, sorts them,
and counts the line's entries between each key and the one before it: the head of the line up to the last
of the keys is read once, whatever k is. The running sum of those counts is each key's count of tickets
ahead, exactly as `tickets_waiting_ahead()` counts it (sort_key strictly less, in the same snapshot: the
function is STABLE).

The same wall as `tickets_waiting_ahead()` (migration 0013): it counts as the tables' owner (SECURITY
DEFINER, so the sort key can bound the index scan under row security), answers only for the tenant the
connection is scoped to (or the `system` scope) and nothing for any other, and returns counts, never rows.

Revision ID: 0014
Revises: 0013
"""

from virtualq.migrations.sql import run_script

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    CREATE FUNCTION tickets_waiting_ahead_each(p_tenant_id uuid, p_queue_id uuid, p_sort_keys numeric[])
        RETURNS TABLE (waiting_key numeric, ahead bigint) LANGUAGE plpgsql STABLE SECURITY DEFINER
        -- Nothing the caller puts on its search path can stand in for a table or an operator here.
        SET search_path = pg_catalog, pg_temp AS $$
    DECLARE
        scope text := current_setting('virtualq.tenant_id', true);
    BEGIN
        IF scope IS DISTINCT FROM 'system' AND p_tenant_id IS DISTINCT FROM nullif(scope, '')::uuid THEN
            RETURN;
        END IF;
        -- Each key's own stretch of the line, [the key before it, the key): two bounds on the index, so
        -- the stretches together read the line once, up to the last key.
        RETURN QUERY
            SELECT k.sort_key, (sum(stretch.n) OVER (ORDER BY k.sort_key))::bigint
              FROM (SELECT d.sort_key, lag(d.sort_key, 1, '-Infinity') OVER (ORDER BY d.sort_key) AS previous
                      FROM (SELECT DISTINCT u.sort_key FROM unnest(p_sort_keys) AS u(sort_key)) d) k
             CROSS JOIN LATERAL (
                 SELECT count(*) AS n FROM public.tickets w
                  WHERE w.tenant_id = p_tenant_id AND w.queue_id = p_queue_id AND w.state_category = 'waiting'
                    AND w.sort_key >= k.previous AND w.sort_key < k.sort_key) stretch;
    END $$;
    REVOKE ALL ON FUNCTION tickets_waiting_ahead_each(uuid, uuid, numeric[]) FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION tickets_waiting_ahead_each(uuid, uuid, numeric[]) TO virtualq_app;
    """)


def downgrade() -> None:
    run_script("DROP FUNCTION tickets_waiting_ahead_each(uuid, uuid, numeric[]);")
