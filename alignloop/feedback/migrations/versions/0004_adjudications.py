"""lead tools and leases: adjudications, task tallies, gold misses, daily activity, the text search index, and
assignments.last_seen_at (the heartbeat)

The tallies, gold misses and daily activity are backfilled from the judgments already there (with the same pure
functions ``alignloop.feedback.tallies`` keeps them with); an open assignment's lease runs from its creation, as
before. The text search index is filled by the first search (``alignloop.feedback.search``), not here: on a big
project that takes a while, and the upgrade runs whenever the studio opens the database.

Revision ID: 0004
Revises: 0002
Create Date: 2027-02-02
"""
import datetime as dt
import itertools
from collections import defaultdict
from types import SimpleNamespace

from alembic import op
import sqlalchemy as sa

from alignloop.feedback.tallies import DAY_FIELDS, add_task_to_days, task_figures


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN: judgments reference assignments (a batch copy would drop the table under them)
    op.add_column('assignments', sa.Column('last_seen_at', sa.DateTime(), nullable=True))
    op.execute("UPDATE assignments SET last_seen_at = created_at")

    op.create_index('ix_judgments_labeler_task', 'judgments', ['labeler_id', 'task_id'], unique=False)

    op.create_table('adjudications',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('labeler_id', sa.Integer(), nullable=True),
    sa.Column('choice', sa.String(length=20), nullable=True),
    sa.Column('ranking', sa.JSON(), nullable=True),
    sa.Column('ratings', sa.JSON(), nullable=True),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['labeler_id'], ['labelers.id'], name=op.f('fk_adjudications_labeler_id_labelers'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_adjudications_project_id_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_adjudications_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_adjudications')),
    sa.UniqueConstraint('task_id', name=op.f('uq_adjudications_task_id'))
    )
    with op.batch_alter_table('adjudications', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_adjudications_project_id'), ['project_id'], unique=False)

    op.create_table('task_tallies',
    sa.Column('task_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('judgments', sa.Integer(), nullable=False),
    sa.Column('skips', sa.Integer(), nullable=False),
    sa.Column('agreement', sa.Float(), nullable=True),
    sa.Column('gold_misses', sa.Integer(), nullable=False),
    sa.Column('last_judged_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_task_tallies_project_id_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_task_tallies_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('task_id', name=op.f('pk_task_tallies'))
    )
    with op.batch_alter_table('task_tallies', schema=None) as batch_op:
        batch_op.create_index('ix_task_tallies_project_agreement', ['project_id', 'agreement', 'task_id'], unique=False)

    op.create_table('gold_misses',
    sa.Column('judgment_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('labeler_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['judgment_id'], ['judgments.id'], name=op.f('fk_gold_misses_judgment_id_judgments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['labeler_id'], ['labelers.id'], name=op.f('fk_gold_misses_labeler_id_labelers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_gold_misses_project_id_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_gold_misses_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('judgment_id', name=op.f('pk_gold_misses'))
    )
    with op.batch_alter_table('gold_misses', schema=None) as batch_op:
        batch_op.create_index('ix_gold_misses_project_task', ['project_id', 'task_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_gold_misses_labeler_id'), ['labeler_id'], unique=False)

    op.create_table('daily_activity',
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('judgments', sa.Integer(), nullable=False),
    sa.Column('skips', sa.Integer(), nullable=False),
    sa.Column('other_judgments', sa.Integer(), nullable=False),
    sa.Column('compared', sa.Integer(), nullable=False),
    sa.Column('agreeing', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_daily_activity_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('project_id', 'day', name=op.f('pk_daily_activity'))
    )

    _create_search_index()
    _backfill()


def _create_search_index() -> None:
    """The text search index: outside the models, as each back-end has its own kind (``feedback.search``)."""
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("CREATE TABLE task_search (task_id INTEGER PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE, "
                   "project_id INTEGER NOT NULL, doc TSVECTOR NOT NULL)")
        op.execute("CREATE INDEX ix_task_search_doc ON task_search USING gin (doc)")
        op.execute("CREATE INDEX ix_task_search_project_id ON task_search (project_id, task_id)")
    elif bind.dialect.name == "sqlite":
        try:  # contentless: it holds the words of each task (rowid = task id), not the texts a second time
            with bind.begin_nested():
                op.execute("CREATE VIRTUAL TABLE task_search USING fts5(body, content='', "
                           "tokenize='unicode61 remove_diacritics 2')")
        except sa.exc.OperationalError:
            pass  # an SQLite built without FTS5: searching by text says so (feedback.search)


def _backfill() -> None:
    bind = op.get_bind()
    j = sa.table('judgments', sa.column('id', sa.Integer), sa.column('task_id', sa.Integer),
                 sa.column('labeler_id', sa.Integer), sa.column('choice', sa.String), sa.column('ranking', sa.JSON),
                 sa.column('ratings', sa.JSON), sa.column('skipped', sa.Boolean), sa.column('created_at', sa.DateTime))
    t = sa.table('tasks', sa.column('id', sa.Integer), sa.column('project_id', sa.Integer),
                 sa.column('task_type', sa.String), sa.column('is_gold', sa.Boolean))
    g = sa.table('gold_answers', sa.column('task_id', sa.Integer), sa.column('answer', sa.JSON))
    lab = sa.table('labelers', sa.column('id', sa.Integer), sa.column('kind', sa.String))
    kinds = dict(bind.execute(sa.select(lab.c.id, lab.c.kind)).all())
    gold = dict(bind.execute(sa.select(g.c.task_id, g.c.answer)).all())
    rows = bind.execute(sa.select(j.c.id, j.c.task_id, j.c.labeler_id, j.c.choice, j.c.ranking, j.c.ratings,
                                  j.c.skipped, j.c.created_at, t.c.project_id, t.c.task_type)
                        .join(t, t.c.id == j.c.task_id).order_by(j.c.task_id, j.c.id))
    tallies, misses = [], []
    days: dict[tuple[int, dt.date], dict[str, int]] = defaultdict(lambda: dict.fromkeys(DAY_FIELDS, 0))
    for task_id, group in itertools.groupby(rows, key=lambda r: r.task_id):
        group = [SimpleNamespace(**r._mapping) for r in group]
        first = group[0]
        fig = task_figures(first.task_type, group, gold.get(task_id))
        tallies.append({"task_id": task_id, "project_id": first.project_id, "judgments": fig["judgments"],
                        "skips": fig["skips"], "agreement": fig["agreement"],
                        "gold_misses": len(fig["gold_miss_ids"]), "last_judged_at": group[-1].created_at})
        misses += [{"judgment_id": x.id, "project_id": first.project_id, "task_id": task_id,
                    "labeler_id": x.labeler_id} for x in group if x.id in fig["gold_miss_ids"]]
        add_task_to_days(days, first.task_type, group, lambda x: kinds.get(x.labeler_id),
                         lambda x, p=first.project_id: (p, x.created_at.date()))
    meta = sa.MetaData()
    for name, values in (("task_tallies", tallies), ("gold_misses", misses),
                         ("daily_activity", [{"project_id": p, "day": d, **v} for (p, d), v in days.items()])):
        if values:
            op.bulk_insert(sa.Table(name, meta, autoload_with=bind), values)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS task_search")
    op.drop_table('daily_activity')
    with op.batch_alter_table('gold_misses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_gold_misses_labeler_id'))
        batch_op.drop_index('ix_gold_misses_project_task')
    op.drop_table('gold_misses')
    with op.batch_alter_table('task_tallies', schema=None) as batch_op:
        batch_op.drop_index('ix_task_tallies_project_agreement')
    op.drop_table('task_tallies')
    with op.batch_alter_table('adjudications', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_adjudications_project_id'))
    op.drop_table('adjudications')
    op.drop_index('ix_judgments_labeler_task', table_name='judgments')
    op.drop_column('assignments', 'last_seen_at')
