"""GET /users/: the people a workspace can be shared with."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_, select

from .. import orm
from ..errors import APIError
from ..models import user_model
from .base import BaseHandler


class UsersHandler(BaseHandler):
    async def get(self) -> None:
        query = self.query_value("search") or ""
        minimum = self.uws.users_min_search_length
        if minimum and len(query) < minimum:
            raise APIError(400, f"Search must be at least {minimum} characters.")
        caller = self.user.id

        def _search(session: Any) -> list[dict[str, Any]]:
            stmt = (
                select(orm.User)
                .where(orm.User.id != caller, orm.User.username != "admin", orm.User.is_active.is_(True))
                .order_by(orm.User.id)
            )
            if query:
                pattern = (
                    "%" + query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                )
                full_name = func.lower(orm.User.first_name + " " + orm.User.last_name)
                stmt = stmt.where(
                    or_(
                        full_name.like(pattern, escape="\\"),
                        func.lower(orm.User.email).like(pattern, escape="\\"),
                    )
                )
            return [user_model(u) for u in session.scalars(stmt)]

        users = await self.uws.db.run(_search)
        message = "Successful." if users else "Users matching given parameters could not be found."
        self.ok(message, {"users": users})
