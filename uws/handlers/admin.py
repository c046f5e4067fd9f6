"""/admin/: users and jobs across all users, for admins only (the `admin` scope: everyone else
gets 403 in the envelope). The work is uws.admin.AdminService's, one method per action."""

from __future__ import annotations

from .base import ID, BaseHandler

USERNAME = r"([^/]{1,255})"


class AdminHandler(BaseHandler):
    required_scopes = {"GET": "admin", "PUT": "admin", "DELETE": "admin"}


class AdminUsersHandler(AdminHandler):
    async def get(self) -> None:
        self.audit("admin.user.list")
        self.ok("Successful.", {"users": await self.admin.list_users(self.user)})


class AdminUserHandler(AdminHandler):
    async def put(self, username: str) -> None:
        body = self.json_body()
        self.audit("admin.user.update", f"user:{username}", fields=sorted(str(k) for k in body)[:10])
        user = await self.admin.update_user(self.user, username, body)
        self.ok("Successful.", {"user": user})


class AdminUserTokensHandler(AdminHandler):
    async def delete(self, username: str) -> None:
        self.audit("admin.token.revoke", f"user:{username}")
        count = await self.admin.revoke_tokens(self.user, username)
        self.audit("admin.token.revoke", f"user:{username}", count=count)
        self.ok(f"Revoked {count} token(s) of {username}.")


class AdminJobsHandler(AdminHandler):
    async def get(self) -> None:
        self.audit("admin.job.list")
        jobs = await self.admin.list_jobs(self.user, self.query_value("status"), self.query_value("user"))
        self.ok(
            "Successful." if jobs else "Job matching given parameters could not be found.", {"jobs": jobs}
        )


class AdminJobActionHandler(AdminHandler):
    async def put(self, job_id: str) -> None:
        self.audit("admin.job.stop", f"job:{int(job_id)}")
        self.ok(await self.admin.stop_job(self.user, int(job_id)))


default_handlers = [
    (r"/admin/users/?", AdminUsersHandler),
    (rf"/admin/users/{USERNAME}/?", AdminUserHandler),
    (rf"/admin/users/{USERNAME}/tokens/?", AdminUserTokensHandler),
    (r"/admin/jobs/?", AdminJobsHandler),
    (rf"/admin/jobs/{ID}/stop/?", AdminJobActionHandler),
]
