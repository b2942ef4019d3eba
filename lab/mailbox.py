"""A mailbox for the tests of failure notices: a real SMTP server (aiosmtpd) on 127.0.0.1 that keeps what it gets.

``Mailbox()`` as a context manager: started on a free port (``port``), stopped at the end; ``mails`` in the order
received (``email.message.Message``); ``wait_for(subject, timeout)`` bounds the wait for one; ``text(mail)`` is a
mail's decoded body; ``connection()`` the fields of an SMTP Connection to it (no TLS, no retry).
"""

from __future__ import annotations

import email
import threading
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

from lab.env import free_port


class Mailbox:
    def __init__(self) -> None:
        self.mails: list[Message] = []
        self._arrived = threading.Condition()
        self._server = Controller(self, hostname="127.0.0.1", port=free_port())

    @property
    def port(self) -> int:
        return self._server.port

    def __enter__(self) -> Mailbox:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook name
        with self._arrived:
            self.mails.append(email.message_from_bytes(envelope.content))
            self._arrived.notify_all()
        return "250 OK"

    def wait_for(self, subject: str, timeout: float, body: str = "") -> Message | None:
        """The first mail whose subject contains ``subject`` (and whose text ``body``), once it came; None if none
        did within ``timeout`` seconds (others may come meanwhile: a run that failed before, in another test, may
        be reported late, once this test's Connection exists)."""

        def found() -> Message | None:
            return next((m for m in self.mails if subject in str(m["Subject"]) and body in self.text(m)), None)

        with self._arrived:
            self._arrived.wait_for(lambda: found() is not None, timeout)
            return found()

    def connection(self, to: str) -> dict[str, Any]:
        """An SMTP Connection's fields (``conn_type`` apart) that mail ``to`` through this server."""
        extra = {"to": to, "from_email": "airflow@lab.example", "disable_ssl": True, "disable_tls": True,
                 "retry_limit": 0}  # fmt: skip
        return {"host": "127.0.0.1", "port": self.port, "extra": extra}

    @staticmethod
    def text(mail: Message) -> str:
        return "".join(part.get_payload(decode=True).decode() for part in mail.walk() if not part.is_multipart())
