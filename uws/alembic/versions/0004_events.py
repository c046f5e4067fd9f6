"""events and client state in the database

Everything a client holds that must stay valid when another server process (sharing this
database) answers it: events (ids from the database; event_horizons says which old ones were
trimmed), websocket tickets, session-start idempotency keys, and users.cookies_not_before (the
passthrough cookies a logout ended).

Revision ID: 0004_events
Revises: 0003_cluster
"""

import time

from alembic import op
import sqlalchemy as sa


revision = "0004_events"
down_revision = "0003_cluster"
branch_labels = None
depends_on = None


def upgrade() -> None:
    event_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "events",
        sa.Column("id", event_id, autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("source_time", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_user_id_id", "events", ["user_id", "id"])
    op.create_index("ix_events_time", "events", ["time"])
    op.create_table(
        "event_horizons",
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("up_to", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_table(
        "ws_tickets",
        sa.Column("ticket_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["token_id"], ["api_tokens.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("ticket_hash"),
    )
    op.create_index("ix_ws_tickets_user_id", "ws_tickets", ["user_id"])
    op.create_index("ix_ws_tickets_expires_at", "ws_tickets", ["expires_at"])
    op.create_table(
        "start_keys",
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key_hash"),
    )
    op.create_index("ix_start_keys_created", "start_keys", ["created"])
    # batch_alter_table: SQLite cannot add a NOT NULL column with a default otherwise.
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("cookies_not_before", sa.BigInteger(), server_default="0", nullable=False)
        )
    # Event ids go on from where the in-memory ids of earlier versions were (start-up time in
    # milliseconds x 1000), so a client's ids keep increasing across the upgrade, and an id it
    # kept from before gets a snapshot (as uws.events_store.seed_event_ids does for a new database).
    base = int(time.time() * 1000) * 1000
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('events', 'id'), :b)"), {"b": base})
    else:
        conn.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', :b)"), {"b": base})
    conn.execute(sa.text("INSERT INTO event_horizons (user_id, up_to) VALUES (0, :b)"), {"b": base})


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("cookies_not_before")
    op.drop_index("ix_start_keys_created", table_name="start_keys")
    op.drop_table("start_keys")
    op.drop_index("ix_ws_tickets_expires_at", table_name="ws_tickets")
    op.drop_index("ix_ws_tickets_user_id", table_name="ws_tickets")
    op.drop_table("ws_tickets")
    op.drop_table("event_horizons")
    op.drop_index("ix_events_time", table_name="events")
    op.drop_index("ix_events_user_id_id", table_name="events")
    op.drop_table("events")
