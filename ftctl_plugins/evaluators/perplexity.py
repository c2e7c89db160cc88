"""Perplexity of the reference answer under the evaluated model (lower is better)."""

from __future__ import annotations

import math

from ftctl.api import Evaluator, UsageError


class Perplexity(Evaluator):
    """exp(mean token loss) of each reference answer, given its prompt.

    Needs the model itself, not just its text (``needs_backend``): the core passes the generation
    backend; backends that cannot score tokens return None (skipped, noted).
    """

    name = "perplexity"
    higher_is_better = False
    needs_backend = True

    def score(self, predictions, references, examples, backend=None):
        if backend is None:
            raise UsageError("perplexity needs a model backend", hint="run it through `ftctl eval`")
        losses = backend.reference_nll(examples, references)
        return [None if loss is None else math.exp(min(loss, 50.0)) for loss in losses]
