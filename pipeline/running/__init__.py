"""Running a run: the coordinator, its ledger, executors and workers. The only room of
``pipeline`` that imports Ray (lazily, so a driver that only plans never does)."""
