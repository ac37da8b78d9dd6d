"""when the config last gave a source a fresh start

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06

``settings.retire_after`` retires a source that has not been polled successfully for that long,
counted from its last success. A source the config pointed at a new URL, or removed and listed
again, starts afresh: its retirement was forgotten, but the count still ran from its last
success under the old URL, so its first failed poll retired it again at once.
``sources.restarted_at`` is when the config last did so; the count runs from the later of the two.

Nothing is rewritten: existing sources get NULL (never restarted).
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0016'
down_revision: Union[str, Sequence[str], None] = '0015'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('sources', sa.Column('restarted_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column('sources', 'restarted_at')
