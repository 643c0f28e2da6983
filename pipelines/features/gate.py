"""The promotion gate: which lists serve after a retrain, and why.

Plain Python on metrics the retrain measured on its test split (the last
`features.holdout_days`, which no choice was tuned on):
- **promoted**: the candidate beats popularity's NDCG@10 by `features.gate.min_lift`
  (a share) and is no worse than the served model, refit on the same data;
- **kept**: otherwise the served lists stay, if the served model still beats
  popularity by that margin;
- **popularity**: otherwise popularity serves (completed items excluded).
"""

from __future__ import annotations

from dataclasses import dataclass

PROMOTED, KEPT, POPULARITY = "promoted", "kept", "popularity"


@dataclass(frozen=True)
class Decision:
    outcome: str
    reason: str


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def decide(
    candidate: float | None,
    baseline: float | None,
    served: float | None,
    min_lift: float,
    has_served: bool,
) -> Decision:
    """The gate on NDCG@10 of the candidate, popularity and the served model.

    A metric is None when the test split had no user to judge it on; then nothing is
    promoted (no evidence), and the served lists stay if there are any."""
    bar = None if baseline is None else baseline * (1 + min_lift)
    facts = (
        f"candidate {_fmt(candidate)}, popularity {_fmt(baseline)}"
        + (f", served {_fmt(served)}" if has_served else "")
    )
    if candidate is None or bar is None:
        if has_served:
            return Decision(KEPT, f"no test users to judge on; served lists stay ({facts})")
        return Decision(POPULARITY, f"no test users to judge on; popularity serves ({facts})")
    beats_popularity = candidate > bar
    beats_served = not has_served or served is None or candidate >= served
    if beats_popularity and beats_served:
        return Decision(PROMOTED, f"beats popularity by > {min_lift:.0%} and the served model "
                                  f"({facts})")
    why = "not above popularity by " + f"{min_lift:.0%}" if not beats_popularity else (
        "below the served model"
    )
    if has_served and served is not None and served > bar:
        return Decision(KEPT, f"candidate {why}; served lists stay ({facts})")
    return Decision(POPULARITY, f"candidate {why}; popularity serves ({facts})")
