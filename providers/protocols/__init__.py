"""One module per protocol family; the catalog's `family` names the module.

A module exposes `generate(call, request) -> GenerationResult` for synchronous APIs, or
`submit(call, request) -> handle` plus `wait(call, handle) -> GenerationResult` for
asynchronous jobs (the handle is a JSON-serialisable dict, journaled before polling).
"""
