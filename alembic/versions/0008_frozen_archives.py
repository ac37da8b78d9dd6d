"""frozen archive pages

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

One row per completed week of an output (RFC 5005 archives): rendered once, when the week
is over, and never again, so an archive's bytes (and ETag) never change and retention
cannot empty it. ``entries`` 0 marks a week that had items but none the output kept: it is
not linked, and it is not looked at again.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('archives',
    sa.Column('slug', sa.String(length=100), nullable=False),
    sa.Column('week', sa.String(length=10), nullable=False),
    sa.Column('entries', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=True),
    sa.Column('atom', sa.LargeBinary(), nullable=False),
    sa.Column('html', sa.LargeBinary(), nullable=False),
    sa.Column('etag', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('slug', 'week')
    )


def downgrade() -> None:
    op.drop_table('archives')
