"""cluster: what the servers sharing this database must agree on

One row, written by the first server to start: the leadership lock's key and a fingerprint of
each secret every server must share (uws.cluster). Nothing to fill in here: a database
upgraded from 0002 gets its row when a server next starts.

Revision ID: 0003_cluster
Revises: 0002_admins_scoped_tokens
"""

from alembic import op
import sqlalchemy as sa


revision = "0003_cluster"
down_revision = "0002_admins_scoped_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("lock_key", sa.BigInteger(), nullable=False),
        sa.Column("fingerprints", sa.JSON(), nullable=False),
        sa.Column("datetime_created", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("cluster")
