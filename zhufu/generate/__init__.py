"""Manufacture: raw shards from the configured LLM through the persistent answer cache (rules/generate.smk).

- `run`: the generate stage, one pool of workers over the shards of a run;
- `estimate`: calls, tokens and cost a config would spend, spending nothing (`zhufu estimate`, `zhufu spend`);
- the engine the run and the LLM judge share: `engine` (the call loop: rate caps, retries, ledger writes),
  `keys` (the cache key of a prompt, the spend scope), `pricing` (token estimates, cost), `cache`,
  `providers` (the LLM clients and their `Provider` protocol), `limits`; `progress`: the run's progress line.
"""
