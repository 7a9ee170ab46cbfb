"""accounts: token expiry and last use, project memberships and leads, content-warning acceptance, audit log,
login throttling, per-labeler gold seed, admin-only projects

Nobody is locked out by the upgrade: every labeler who already has an assignment in a project becomes a member
of it, and existing API tokens get an expiry 90 days after the upgrade (they never expired before). Projects
that hold feedback from users of a served model (judgments by labelers of kind 'user') become admin-only.

Revision ID: 0002
Revises: 0001
Create Date: 2027-01-12
"""
import datetime as dt

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

EXISTING_TOKEN_DAYS = 90


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def upgrade() -> None:
    # plain ADD COLUMN, never batch mode, on tables that others reference: on SQLite batch mode copies the table
    # and drops the old one, and with foreign keys on that DROP cascades (it emptied prompts, tasks, judgments)
    op.add_column('projects', sa.Column('admin_only', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column('labelers', sa.Column('gold_seed', sa.String(length=64), nullable=True))
    op.add_column('api_tokens', sa.Column('name', sa.String(length=100), nullable=False, server_default=''))
    op.add_column('api_tokens', sa.Column('expires_at', sa.DateTime(), nullable=True))
    op.add_column('api_tokens', sa.Column('last_used_at', sa.DateTime(), nullable=True))
    bind = op.get_bind()
    bind.execute(sa.text("UPDATE api_tokens SET expires_at = :at"),
                 {"at": _now() + dt.timedelta(days=EXISTING_TOKEN_DAYS)})
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:  # (no table references api_tokens)
        batch_op.alter_column('expires_at', existing_type=sa.DateTime(), nullable=False)

    op.create_table('memberships',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('labeler_id', sa.Integer(), nullable=False),
    sa.Column('role', sa.String(length=10), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['labeler_id'], ['labelers.id'], name=op.f('fk_memberships_labeler_id_labelers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_memberships_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_memberships')),
    sa.UniqueConstraint('project_id', 'labeler_id', name=op.f('uq_memberships_project_id_labeler_id'))
    )
    with op.batch_alter_table('memberships', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_memberships_labeler_id'), ['labeler_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_memberships_project_id'), ['project_id'], unique=False)

    op.create_table('warning_acceptances',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('labeler_id', sa.Integer(), nullable=False),
    sa.Column('warning_sha256', sa.String(length=64), nullable=False),
    sa.Column('accepted_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['labeler_id'], ['labelers.id'], name=op.f('fk_warning_acceptances_labeler_id_labelers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_warning_acceptances_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_warning_acceptances')),
    sa.UniqueConstraint('project_id', 'labeler_id', name=op.f('uq_warning_acceptances_project_id_labeler_id'))
    )
    with op.batch_alter_table('warning_acceptances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_warning_acceptances_labeler_id'), ['labeler_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_warning_acceptances_project_id'), ['project_id'], unique=False)

    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('action', sa.String(length=40), nullable=False),
    sa.Column('target', sa.String(length=200), nullable=False),
    sa.Column('client', sa.String(length=100), nullable=False),
    sa.Column('ok', sa.Boolean(), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_log_at'), ['at'], unique=False)

    op.create_table('login_throttle',
    sa.Column('key', sa.String(length=300), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('last_failure_at', sa.DateTime(), nullable=False),
    sa.Column('locked_until', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_login_throttle'))
    )

    # nobody loses work they started: a labeler with assignments in a project becomes its member
    bind.execute(sa.text(
        "INSERT INTO memberships (project_id, labeler_id, role, created_at) "
        "SELECT DISTINCT t.project_id, a.labeler_id, 'labeler', :now FROM assignments a "
        "JOIN tasks t ON t.id = a.task_id JOIN labelers l ON l.id = a.labeler_id WHERE l.role <> 'admin'"),
        {"now": _now()})
    # real users' prompts (feedback captured by alignloop serve) are for admins only
    bind.execute(sa.text(
        "UPDATE projects SET admin_only = :yes WHERE id IN (SELECT t.project_id FROM judgments j "
        "JOIN tasks t ON t.id = j.task_id JOIN labelers l ON l.id = j.labeler_id WHERE l.kind = 'user')"),
        {"yes": True})


def downgrade() -> None:
    op.drop_table('login_throttle')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_log_at'))
    op.drop_table('audit_log')
    with op.batch_alter_table('warning_acceptances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_warning_acceptances_project_id'))
        batch_op.drop_index(batch_op.f('ix_warning_acceptances_labeler_id'))
    op.drop_table('warning_acceptances')
    with op.batch_alter_table('memberships', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_memberships_project_id'))
        batch_op.drop_index(batch_op.f('ix_memberships_labeler_id'))
    op.drop_table('memberships')
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_column('last_used_at')
        batch_op.drop_column('expires_at')
        batch_op.drop_column('name')
    with op.batch_alter_table('labelers', schema=None) as batch_op:
        batch_op.drop_column('gold_seed')
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.drop_column('admin_only')
