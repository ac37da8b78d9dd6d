"""archive week pages

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06

A week with more items than one archive document holds is archived as several pages
(``archive.Page``): ``2026-W47``, ``2026-W47-2`` and on. Until now such a week kept only its
newest items. The page label needs more than the week's ten characters, and each page records
where the week's next one starts (``continues_at``, ``continues_after``; NULL on a week's
last page), so a publish that stopped between two pages takes up the next.

Every existing row is a whole week (its last page: NULL). PostgreSQL widens the column and
adds the two; SQLite rebuilds the table as 0010 did, the documents staying its last columns.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0015'
down_revision: Union[str, Sequence[str], None] = '0014'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

KEPT = 'slug, week, entries, updated_at, etag, created_at, atom, html'
ITEM_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    if op.get_bind().dialect.name != 'sqlite':
        op.alter_column('archives', 'week', type_=sa.String(length=16), existing_type=sa.String(length=10),
                        existing_nullable=False)
        op.add_column('archives', sa.Column('continues_at', sa.DateTime(), nullable=True))
        op.add_column('archives', sa.Column('continues_after', ITEM_ID, nullable=True))
        return
    _rebuild(16, with_continuation=True)


def downgrade() -> None:
    # A week's later pages ("2026-W47-2"): the older code never made them, and cannot read them.
    op.execute("DELETE FROM archives WHERE length(week) > 8")
    if op.get_bind().dialect.name != 'sqlite':
        op.drop_column('archives', 'continues_after')
        op.drop_column('archives', 'continues_at')
        op.alter_column('archives', 'week', type_=sa.String(length=10), existing_type=sa.String(length=16),
                        existing_nullable=False)
        return
    _rebuild(10, with_continuation=False)


def _rebuild(week_length: int, with_continuation: bool) -> None:
    continuation = [
        sa.Column('continues_at', sa.DateTime(), nullable=True),
        sa.Column('continues_after', ITEM_ID, nullable=True),
    ] if with_continuation else []
    op.execute('DROP TABLE IF EXISTS archives_rebuilt')  # left by a run killed before it committed (older versions; see alembic/env.py)
    op.create_table('archives_rebuilt',
    sa.Column('slug', sa.String(length=100), nullable=False),
    sa.Column('week', sa.String(length=week_length), nullable=False),
    sa.Column('entries', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=True),
    sa.Column('etag', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    *continuation,
    sa.Column('atom', sa.LargeBinary(), nullable=False),
    sa.Column('html', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('slug', 'week')
    )
    op.execute(f'INSERT INTO archives_rebuilt ({KEPT}) SELECT {KEPT} FROM archives')
    op.drop_table('archives')
    op.rename_table('archives_rebuilt', 'archives')
