"""Built-in evaluators, registered through the `ftctl` entry-point group like any plugin.

Every evaluator returns one score per example (None where it does not apply), so two
versions scored on the same set can be compared pair by pair (ftctl.lib.stats).
"""

from ftctl.api import hookimpl
from ftctl_plugins.evaluators.classification import Classification
from ftctl_plugins.evaluators.groundedness import Groundedness
from ftctl_plugins.evaluators.judge import LlmJudge
from ftctl_plugins.evaluators.lexical import Bleu, ExactMatch, RougeL, TokenF1
from ftctl_plugins.evaluators.memorisation import Memorisation, PhiInOutput
from ftctl_plugins.evaluators.perplexity import Perplexity

BUILTINS = (ExactMatch, TokenF1, Bleu, RougeL, Perplexity, LlmJudge, Groundedness, Classification, Memorisation,
            PhiInOutput)


@hookimpl
def register_evaluators(register):
    for cls in BUILTINS:
        register(cls)


@hookimpl
def register_guard_tasks(register):
    from ftctl_plugins.evaluators.guards import Capitals, Currencies

    register(Capitals)
    register(Currencies)
