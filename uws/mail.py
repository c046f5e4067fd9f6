"""Share invitations by email: best-effort, never blocking a status change (B16a)."""

from __future__ import annotations

import logging
import smtplib
import threading
from email.message import EmailMessage
from typing import Any

from traitlets import Integer, Unicode
from traitlets.config import LoggingConfigurable

log = logging.getLogger("uws.mail")

DEFAULT_TEMPLATE = (
    'Hello {first_name},\n\nA workspace named "{workspace_name}" has been shared with you. '
    "Accept it in your workspaces list to start using it.\n"
)


class Mailer(LoggingConfigurable):
    smtp_host = Unicode("", config=True, help="SMTP server for share invitations; empty sends none.")
    smtp_port = Integer(25, config=True, help="Port of the SMTP server.")
    sender = Unicode("uws@localhost", config=True, help="From address of share invitations.")
    template = Unicode(
        DEFAULT_TEMPLATE,
        config=True,
        help="Body of the invitation; {first_name} and {workspace_name} are filled in.",
    )

    def share_invitation(self, recipient: Any, workspace: Any) -> None:
        if not self.smtp_host or not recipient.email:
            return
        threading.Thread(target=self._send, args=(recipient, workspace), daemon=True).start()

    def _send(self, recipient: Any, workspace: Any) -> None:
        try:
            msg = EmailMessage()
            msg["Subject"] = "A workspace has been shared with you"
            msg["From"] = self.sender
            msg["To"] = recipient.email
            msg.set_content(
                self.template.format(first_name=recipient.first_name, workspace_name=workspace.name)
            )
            with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=10) as smtp:
                smtp.send_message(msg)
        except Exception:
            log.exception("Could not send the share invitation to %s", recipient.email)
