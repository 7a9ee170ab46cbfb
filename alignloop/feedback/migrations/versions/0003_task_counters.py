"""task counters: places taken per task, a project's open tasks, each labeler's progress, and the queue indexes

"Next task" no longer counts anything per request (issue 20): each task keeps how many places are taken, the
project how many regular tasks still have a free place, and each labeler in each project a row with their
assignments, judgments, the regular tasks with a free place they have seen, and their cursor in the project's
order. The counters are filled from the existing rows here (nothing is estimated); cursors start empty (a
labeler's next search starts at the head of the queue, as before).

Self-contained on purpose (plain SQL, no application imports): later code may change, this revision may not.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

UNCERTAINTY_RANK = "coalesce(-uncertainty, 1e308)"


def upgrade() -> None:
    bind = op.get_bind()
    # plain ADD COLUMN, never batch mode, on tables that others reference (see 0002: on SQLite a batch copies the
    # table and drops the old one, and with foreign keys on that DROP cascades)
    op.add_column('projects', sa.Column('open_tasks', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('projects', sa.Column('counted_seq', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('tasks', sa.Column('places_taken', sa.Integer(), nullable=False, server_default='0'))
    # SQLite adds only VIRTUAL generated columns to an existing table (and indexes them); PostgreSQL indexes only
    # STORED ones
    persisted = bind.dialect.name != 'sqlite'
    op.add_column('tasks', sa.Column('uncertainty_rank', sa.Float(), sa.Computed(UNCERTAINTY_RANK, persisted=persisted),
                                     nullable=True))
    op.create_table('labeler_progress',
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('labeler_id', sa.Integer(), nullable=False),
    sa.Column('assignments', sa.Integer(), server_default='0', nullable=False),
    sa.Column('judgments', sa.Integer(), server_default='0', nullable=False),
    sa.Column('seen_open', sa.Integer(), server_default='0', nullable=False),
    sa.Column('cursor_task_id', sa.Integer(), nullable=True),
    sa.Column('cursor_order', sa.String(length=20), nullable=True),
    sa.Column('gold_cursor_task_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['labeler_id'], ['labelers.id'], name=op.f('fk_labeler_progress_labeler_id_labelers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_labeler_progress_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('project_id', 'labeler_id', name=op.f('pk_labeler_progress'))
    )
    op.create_index(op.f('ix_labeler_progress_labeler_id'), 'labeler_progress', ['labeler_id'], unique=False)

    # the counters, from the rows as they are
    no = False
    bind.execute(sa.text(
        "UPDATE tasks SET places_taken = (SELECT count(*) FROM assignments a WHERE a.task_id = tasks.id "
        "AND a.slot IS NOT NULL) WHERE id IN (SELECT task_id FROM assignments WHERE slot IS NOT NULL)"))
    bind.execute(sa.text(
        "UPDATE projects SET open_tasks = (SELECT count(*) FROM tasks t WHERE t.project_id = projects.id "
        "AND t.is_gold = :no AND t.places_taken < projects.overlap), "
        "counted_seq = coalesce((SELECT max(t.seq) FROM tasks t WHERE t.project_id = projects.id), 0)"
    ).bindparams(sa.bindparam('no', no, type_=sa.Boolean())))
    bind.execute(sa.text(
        "INSERT INTO labeler_progress (project_id, labeler_id, assignments, judgments, seen_open) "
        "SELECT k.project_id, k.labeler_id, coalesce(a.n, 0), coalesce(j.n, 0), coalesce(o.n, 0) FROM "
        "(SELECT t.project_id, x.labeler_id FROM assignments x JOIN tasks t ON t.id = x.task_id "
        " UNION SELECT t.project_id, x.labeler_id FROM judgments x JOIN tasks t ON t.id = x.task_id) k "
        "LEFT JOIN (SELECT t.project_id, x.labeler_id, count(*) AS n FROM assignments x "
        " JOIN tasks t ON t.id = x.task_id GROUP BY t.project_id, x.labeler_id) a "
        " ON a.project_id = k.project_id AND a.labeler_id = k.labeler_id "
        "LEFT JOIN (SELECT t.project_id, x.labeler_id, count(*) AS n FROM judgments x "
        " JOIN tasks t ON t.id = x.task_id GROUP BY t.project_id, x.labeler_id) j "
        " ON j.project_id = k.project_id AND j.labeler_id = k.labeler_id "
        "LEFT JOIN (SELECT t.project_id, x.labeler_id, count(*) AS n FROM "
        " (SELECT task_id, labeler_id FROM assignments UNION SELECT task_id, labeler_id FROM judgments) x "
        " JOIN tasks t ON t.id = x.task_id JOIN projects p ON p.id = t.project_id "
        " WHERE t.is_gold = :no AND t.places_taken < p.overlap GROUP BY t.project_id, x.labeler_id) o "
        " ON o.project_id = k.project_id AND o.labeler_id = k.labeler_id"
    ).bindparams(sa.bindparam('no', no, type_=sa.Boolean())))

    # the queue: a project's tasks by places taken, then in its order; the rest without reading a labeler's history
    op.create_index('ix_tasks_queue_import', 'tasks', ['project_id', 'is_gold', 'places_taken', 'seq', 'id'],
                    unique=False)
    op.create_index('ix_tasks_queue_uncertainty', 'tasks',
                    ['project_id', 'is_gold', 'places_taken', 'uncertainty_rank', 'seq', 'id'], unique=False)
    op.create_index('ix_tasks_project_id_seq', 'tasks', ['project_id', 'seq'], unique=False)
    op.create_index('ix_assignments_labeler_id_status', 'assignments', ['labeler_id', 'status'], unique=False)
    op.create_index('ix_assignments_status_created_at', 'assignments', ['status', 'created_at'], unique=False)


def downgrade() -> None:
    # plain DROP COLUMN (SQLite 3.35+), for the same reason as above
    op.drop_index('ix_assignments_status_created_at', table_name='assignments')
    op.drop_index('ix_assignments_labeler_id_status', table_name='assignments')
    op.drop_index('ix_tasks_project_id_seq', table_name='tasks')
    op.drop_index('ix_tasks_queue_uncertainty', table_name='tasks')
    op.drop_index('ix_tasks_queue_import', table_name='tasks')
    op.drop_index(op.f('ix_labeler_progress_labeler_id'), table_name='labeler_progress')
    op.drop_table('labeler_progress')
    op.drop_column('tasks', 'uncertainty_rank')
    op.drop_column('tasks', 'places_taken')
    op.drop_column('projects', 'counted_seq')
    op.drop_column('projects', 'open_tasks')
