"""integer story-matching keys

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

item_match_keys holds integers only: the key (a 32-bit phrase hash, or a headline hash plus
2**32, instead of "p"/"h" and eight hex digits) and the item's sort time in Unix seconds
(sort_epoch, instead of a timestamp: 26 characters on SQLite). Rows shrink from about 50
bytes to 20. The rows are copied over, converted.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
HEADLINE_KEY = 1 << 32


def _text_key_to_int(key: str) -> int:
    """'p0a1b2c3d' -> 0x0a1b2c3d; 'h0a1b2c3d' -> 2**32 + 0x0a1b2c3d."""
    return int(key[1:], 16) + (HEADLINE_KEY if key[:1] == 'h' else 0)


def upgrade() -> None:
    bind = op.get_bind()
    op.execute('DROP TABLE IF EXISTS item_match_keys_new')  # left by a run killed before it committed (older versions; see alembic/env.py)
    op.create_table(
        'item_match_keys_new',
        sa.Column('key', sa.BigInteger(), nullable=False),
        sa.Column('sort_epoch', sa.BigInteger(), nullable=False),
        sa.Column('item_id', ID, nullable=False),
        sa.ForeignKeyConstraint(['item_id'], ['items.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('key', 'sort_epoch', 'item_id'),
        sqlite_with_rowid=False,
    )
    if bind.dialect.name == 'sqlite':
        # SQLite cannot read hexadecimal text itself: lend it the conversion for this statement.
        bind.connection.driver_connection.create_function('text_key_to_int', 1, _text_key_to_int, deterministic=True)
        key, epoch = 'text_key_to_int(key)', "CAST(strftime('%s', sort_at) AS INTEGER)"
    else:
        key = (
            "('x' || lpad(substr(key, 2), 16, '0'))::bit(64)::bigint"
            f" + CASE WHEN substr(key, 1, 1) = 'h' THEN {HEADLINE_KEY} ELSE 0 END"
        )
        epoch = 'CAST(EXTRACT(EPOCH FROM sort_at) AS BIGINT)'
    op.execute(
        'INSERT INTO item_match_keys_new (key, sort_epoch, item_id) '
        f'SELECT DISTINCT {key}, {epoch}, item_id FROM item_match_keys'
    )
    op.drop_table('item_match_keys')
    op.rename_table('item_match_keys_new', 'item_match_keys')
    op.create_index('ix_item_match_keys_item', 'item_match_keys', ['item_id'], unique=False)


def downgrade() -> None:
    bind = op.get_bind()
    op.create_table(
        'item_match_keys_old',
        sa.Column('key', sa.String(length=16), nullable=False),
        sa.Column('sort_at', sa.DateTime(), nullable=False),
        sa.Column('item_id', ID, nullable=False),
        sa.ForeignKeyConstraint(['item_id'], ['items.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('key', 'sort_at', 'item_id'),
        sqlite_with_rowid=False,
    )
    if bind.dialect.name == 'sqlite':
        key = f"printf('%s%08x', CASE WHEN key >= {HEADLINE_KEY} THEN 'h' ELSE 'p' END, key % {HEADLINE_KEY})"
        moment = "datetime(sort_epoch, 'unixepoch') || '.000000'"
    else:
        key = (
            f"CASE WHEN key >= {HEADLINE_KEY} THEN 'h' ELSE 'p' END"
            f" || lpad(to_hex(key % {HEADLINE_KEY}), 8, '0')"
        )
        moment = "to_timestamp(sort_epoch) AT TIME ZONE 'UTC'"
    op.execute(
        'INSERT INTO item_match_keys_old (key, sort_at, item_id) '
        f'SELECT DISTINCT {key}, {moment}, item_id FROM item_match_keys'
    )
    op.drop_table('item_match_keys')
    op.rename_table('item_match_keys_old', 'item_match_keys')
    op.create_index('ix_item_match_keys_item', 'item_match_keys', ['item_id'], unique=False)
