"""Operations plumbing both services share: structured logs, Prometheus metrics, systemd notify.

Thin I/O helpers only; nothing here knows about outreach, reports or the wire
contract (that is ``shared``).
"""
