"""archive documents last

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

SQLite builds a row's whole record in memory when it is inserted, and a blob made with
``zeroblob(n)`` stays unexpanded only when no column after it holds data. A frozen archive
week is stored as two such blobs and then streamed in (``OutputStore.save_archive``), so on
SQLite the ``archives`` table is rebuilt with ``atom`` and ``html`` as its last columns.
Every row is copied as it is. PostgreSQL stores the documents as bound parameters, and the
order of its columns does not matter: nothing changes there.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0010'
down_revision: Union[str, Sequence[str], None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

COLUMNS = 'slug, week, entries, updated_at, etag, created_at, atom, html'


def upgrade() -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return
    op.execute('DROP TABLE IF EXISTS archives_reordered')  # left by a run killed before it committed (older versions; see alembic/env.py)
    op.create_table('archives_reordered',
    sa.Column('slug', sa.String(length=100), nullable=False),
    sa.Column('week', sa.String(length=10), nullable=False),
    sa.Column('entries', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=True),
    sa.Column('etag', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('atom', sa.LargeBinary(), nullable=False),
    sa.Column('html', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('slug', 'week')
    )
    op.execute(f'INSERT INTO archives_reordered ({COLUMNS}) SELECT {COLUMNS} FROM archives')
    op.drop_table('archives')
    op.rename_table('archives_reordered', 'archives')


def downgrade() -> None:
    pass  # the column order only matters to the memory an insert takes: nothing to undo
