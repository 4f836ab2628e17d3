"""Hyperparameter search with Optuna over any fine-tuning or pretraining config
(`python -m flaxlm.search`; see flaxlm/search/study.py for how trials run, prune and resume).

    from flaxlm.search import SearchConfig, Job, search, space
"""

from flaxlm.search import space
from flaxlm.search.study import Job, SearchConfig, search

__all__ = ["Job", "SearchConfig", "search", "space"]
