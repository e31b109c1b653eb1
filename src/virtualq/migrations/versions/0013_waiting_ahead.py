"""A waiting ticket's position counted through the line's index, whatever the line's length.

A ticket's position is one more than the waiting tickets ahead of it in its queue: a count over
`tickets_waiting_line_idx` (tenant, queue, sort_key). Under row security that count could not use the
index for `sort_key < ...`: numeric comparison is not leakproof, so PostgreSQL must apply the policy to
each row before it may compare its sort key, and read every waiting ticket of the queue from the heap.
Every position cost O(line length): over a line of 20,000, 1.3 ms for the ticket at its head, as much as
for the one at its end.

`tickets_waiting_ahead()` counts as the tables' owner (SECURITY DEFINER, which row security does not
apply to), so the sort key bounds the index scan: the head of a 20,000 line costs 0.13 ms, the middle
0.5 ms. The wall stays where it was: the function answers only for the tenant the connection is scoped to
(or for the `system` scope), and NULL for any other; it takes only a queue and a sort key and returns a
count, never a row.

`p_except_id` leaves one ticket out: a statement that moves a ticket sees the line as it was before the
move, with the ticket's own old row in it.

STABLE: the count runs in the calling statement's snapshot, as the subquery it replaces did.

Revision ID: 0013
Revises: 0012
"""

from virtualq.migrations.sql import run_script

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    CREATE FUNCTION tickets_waiting_ahead(p_tenant_id uuid, p_queue_id uuid, p_sort_key numeric,
                                          p_except_id uuid DEFAULT NULL)
        RETURNS bigint LANGUAGE plpgsql STABLE SECURITY DEFINER
        -- Nothing the caller puts on its search path can stand in for a table or an operator here.
        SET search_path = pg_catalog, pg_temp AS $$
    DECLARE
        scope text := current_setting('virtualq.tenant_id', true);
    BEGIN
        IF scope IS DISTINCT FROM 'system' AND p_tenant_id IS DISTINCT FROM nullif(scope, '')::uuid THEN
            RETURN NULL;
        END IF;
        IF p_except_id IS NULL THEN
            RETURN (SELECT count(*) FROM public.tickets
                     WHERE tenant_id = p_tenant_id AND queue_id = p_queue_id AND state_category = 'waiting'
                       AND sort_key < p_sort_key);
        END IF;
        RETURN (SELECT count(*) FROM public.tickets
                 WHERE tenant_id = p_tenant_id AND queue_id = p_queue_id AND state_category = 'waiting'
                   AND sort_key < p_sort_key AND id <> p_except_id);
    END $$;
    REVOKE ALL ON FUNCTION tickets_waiting_ahead(uuid, uuid, numeric, uuid) FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION tickets_waiting_ahead(uuid, uuid, numeric, uuid) TO virtualq_app;
    """)


def downgrade() -> None:
    run_script("DROP FUNCTION tickets_waiting_ahead(uuid, uuid, numeric, uuid);")
