"""bmsreboot: reboot Huawei Cloud bare-metal servers at fleet scale, with an audit trail.

Layout:
- ``worker.settings``: the one typed settings object (``BMSREBOOT_*`` environment).
- ``worker.bms``: the BMS API client (signing, token auth, error tree, typed jobs).
- ``worker.simulator``: a wire-faithful local BMS API for tests, the demo and benchmarks.
- ``worker.db``: the audit database (models, state machine, queries).
- ``worker.pipeline``: plain functions behind the Celery tasks (intake, submit, poll).
- ``worker.webhooks``: events announced to other systems (signed webhooks, chat), from an outbox.
- ``worker.celery``: the Celery application (``celery -A worker worker``).
- ``tasks``: the thin Celery tasks, with stable names ``bmsreboot.*``.
"""

__version__ = "0.1.0"
