"""lean story-matching keys

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

item_match_keys: primary key (key, sort_at, item_id), which is also the lookup index, and on
SQLite WITHOUT ROWID. Before, each row was written to four B-trees (rowid table, primary-key
index, (key, sort_at) index, item_id index); now two. The rows are copied over.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.execute('DROP TABLE IF EXISTS item_match_keys_new')  # left by a run killed before it committed (older versions; see alembic/env.py)
    op.create_table(
        'item_match_keys_new',
        sa.Column('key', sa.String(length=16), nullable=False),
        sa.Column('sort_at', sa.DateTime(), nullable=False),
        sa.Column('item_id', ID, nullable=False),
        sa.ForeignKeyConstraint(['item_id'], ['items.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('key', 'sort_at', 'item_id'),
        sqlite_with_rowid=False,
    )
    op.execute(
        'INSERT INTO item_match_keys_new (key, sort_at, item_id) '
        'SELECT key, sort_at, item_id FROM item_match_keys'
    )
    op.drop_table('item_match_keys')
    op.rename_table('item_match_keys_new', 'item_match_keys')
    op.create_index('ix_item_match_keys_item', 'item_match_keys', ['item_id'], unique=False)


def downgrade() -> None:
    op.create_table(
        'item_match_keys_old',
        sa.Column('key', sa.String(length=16), nullable=False),
        sa.Column('item_id', ID, nullable=False),
        sa.Column('sort_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['item_id'], ['items.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('key', 'item_id'),
    )
    op.execute(
        'INSERT INTO item_match_keys_old (key, item_id, sort_at) '
        'SELECT key, item_id, min(sort_at) FROM item_match_keys GROUP BY key, item_id'
    )
    op.drop_table('item_match_keys')
    op.rename_table('item_match_keys_old', 'item_match_keys')
    op.create_index('ix_item_match_keys_item', 'item_match_keys', ['item_id'], unique=False)
    op.create_index('ix_item_match_keys_key_sort', 'item_match_keys', ['key', 'sort_at'], unique=False)
