"""Alembic environment: the engine comes from uws.db, never from an ini file."""

from alembic import context

from uws import orm

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=orm.Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
