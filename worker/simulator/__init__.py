"""A local, wire-faithful simulator of the Huawei Cloud BMS API (power actions, jobs, IAM tokens).

Entry points: ``worker.simulator.server.SimulatorServer`` (in-process),
``worker.simulator.config.SimulatorConfig`` (knobs) and ``bmsreboot simulator`` (CLI).
See ``docs/simulator.md``.

Why it lives inside the ``worker`` package and not beside it: the README's first command
installs the package and runs ``bmsreboot demo``, which needs the simulator; operators try the
pipeline with ``bmsreboot simulator``, and docker-compose runs it from the same image. A
separate top-level package would have to be installed for all of that. It imports nothing from
the pipeline (only the client's signing code and API constants, which it must share byte for
byte), so it stays a product of its own inside the same distribution.
"""
