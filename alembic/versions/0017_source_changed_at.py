"""when a poll last stored a new or changed item of a source

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06

A poll commits its items, then publishes the outputs they touch. A process killed between the
two, or a publish that failed (a full disk under output_dir), left items stored that no output
showed, and no later poll published them: only the outputs of a poll's own new items were.
``sources.changed_at`` is set in the transaction that stores a source's new or changed items;
an output last published before one of its sources changed is published again at the next poll.

Nothing is rewritten: existing sources get NULL (nothing unpublished).
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0017'
down_revision: Union[str, Sequence[str], None] = '0016'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('sources', sa.Column('changed_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column('sources', 'changed_at')
