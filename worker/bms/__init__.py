"""The Huawei Cloud BMS API client.

- :mod:`worker.bms.client`: :class:`~worker.bms.client.BmsClient` (batch reboot, job queries, the
  server list and one server's details).
- :mod:`worker.bms.errors`: the error tree; ``maybe_accepted`` decides whether a POST may be sent
  again (what the pipeline does after an error: ``worker.pipeline.failures``).
- :mod:`worker.bms.signing`: AK/SK request signing (SDK-HMAC-SHA256).
- :mod:`worker.bms.auth`: IAM password-token auth.
- :mod:`worker.bms.credentials`: where an AK/SK comes from (static, environment, the SDK's
  credentials file) and the refresh of temporary credentials; :mod:`worker.bms.metadata` (the
  host's agency) and :mod:`worker.bms.agency` (STS assume-agency) are temporary ones.
- :mod:`worker.bms.sources`: any credential source from a small dict (``credentials_from_config``).
- :mod:`worker.bms.models`: typed jobs and sub-jobs, servers and pages of servers.

Import from the modules themselves; this package re-exports nothing.
"""
