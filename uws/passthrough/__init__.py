"""The passthrough: the authenticated proxy from the browser to each running session.

One file for each question:
- `urls.py`: where sessions live in the browser (their host names, the links to them).
- `service.py`: ProxyService, the passthrough's state and options: targets, access cookies,
  activity, the pool of connections to sessions.
- `admission.py`: who is let in, and to which session (the one decision every entry point asks).
- `wire.py`: what changes in requests and answers on the way (headers, cookies, the path).
- `head.py`: HTTP/1.1 heads, read by llhttp (httptools) and written back.
- `upstream.py`: the keep-alive client to session apps.
- `relay.py`: the one HTTP relay core; `splice.py`: the one websocket relay (bytes both ways).
- Entry points: `front.py` (the server's front door: every connection starts there),
  `handed_off.py` (connections Tornado serves), `handlers.py` (bodies, token exchanges,
  refusals, websockets Tornado holds, and the route lists).
"""

from .service import ProxyService, Target
from .urls import SessionHosts, SessionURLs, new_host_label

__all__ = ["ProxyService", "SessionHosts", "SessionURLs", "Target", "new_host_label"]
