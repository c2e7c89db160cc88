"""The built-in reward table: what a feedback type says about an answer, in -1..+1.

Registered as a ``reward`` hook with ``trylast``: a team's own plugin answers first and may
leave a type to this table by returning None. The sizes follow how much each signal commits
the user: an explicit thumbs is the strongest; copying or sharing an answer is a quieter yes;
editing it keeps the gist but says it was not right; asking for another answer says it was not
usable; a report is as bad as a thumbs down. Rows without a known type get no reward (their
rating, if any, is a rating).
"""

from __future__ import annotations

from ftctl.api import Example, hookimpl

TABLE = {
    "thumbs_up": 1.0, "like": 1.0, "upvote": 1.0, "accept": 1.0, "accepted": 1.0, "validation": 1.0,
    "copy": 0.5, "share": 0.5,
    "edit": -0.3, "correction": -0.3,
    "regenerate": -0.5, "retry": -0.5,
    "thumbs_down": -1.0, "dislike": -1.0, "downvote": -1.0, "report": -1.0, "flag": -1.0,
}


@hookimpl(trylast=True)
def reward(example: Example) -> float | None:
    kind = (example.feedback_type or "").strip().lower().replace("-", "_").replace(" ", "_")
    return TABLE.get(kind)


reward.reads_feedback_type_only = True  # its answer per feedback type is asked once (ftctl.plugins.rewarder)
