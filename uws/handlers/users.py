"""GET /users/: the people a workspace can be shared with."""

from __future__ import annotations

from ..errors import APIError
from ..queries import shareable_users
from .base import BaseHandler


class UsersHandler(BaseHandler):
    async def get(self) -> None:
        query = self.query_value("search") or ""
        minimum = self.config.users_min_search_length
        if minimum and len(query) < minimum:
            raise APIError(400, f"Search must be at least {minimum} characters.")
        caller = self.user.id
        if "\x00" in query:
            # No stored name holds a NUL (PostgreSQL refuses one in any string it is sent).
            users = []
        else:
            users = await self.db.run(lambda session: shareable_users(session, caller, query))
        message = "Successful." if users else "Users matching given parameters could not be found."
        self.ok(message, {"users": users})


default_handlers = [(r"/users/?", UsersHandler)]
