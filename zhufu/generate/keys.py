"""The keys of a call: the answer cache's key of a cell's prompt, and the (provider, model) scope of the spend
ledger and the shared rate caps. The run, the estimate and the judge compute them here, so a cached answer
is found by all three."""

from __future__ import annotations

import json

from zhufu import grid
from zhufu.generate.cache import cache_key, canonical_request
from zhufu.generate.providers import provider_identity, sampling_params


def cell_key(config: dict, prompt: grid.Prompt, endpoint: str | None = None) -> tuple[str, str]:
    """The answer cache's key of a cell's prompt, and the canonical request it stands for, for the
    endpoint that answers it (None: the config's own)."""
    identity = provider_identity(config["provider"], endpoint)
    params = sampling_params(config["provider"])
    sample = prompt.cell.round
    return (
        cache_key(identity, prompt.messages, params, sample),
        canonical_request(identity, prompt.messages, params, sample),
    )


def spend_scope(provider: dict, endpoint: str | None = None) -> tuple[str, str]:
    """(provider, model) of the spend ledger and the shared rate caps: who answers, and the model."""
    identity = provider_identity(provider, endpoint)
    model = identity.pop("model")
    return json.dumps(identity, sort_keys=True), model
