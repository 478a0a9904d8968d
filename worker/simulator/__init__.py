"""A local, wire-faithful simulator of the Huawei Cloud BMS API (power actions, jobs, IAM tokens).

Entry points: ``worker.simulator.server.SimulatorServer`` (in-process),
``worker.simulator.config.SimulatorConfig`` (knobs) and ``bmsreboot simulator`` (CLI).
See ``docs/simulator.md``.
"""
