"""The names the CLI's help offers (learn/choices.py, importable without torch) are exactly the
names the implementations register."""

from __future__ import annotations

from supsup_cli.learn import choices
from supsup_cli.learn.evaluation import SCENARIOS
from supsup_cli.learn.objectives import OBJECTIVES
from supsup_cli.learn.taskid import METHODS
from supsup_cli.learn.train import AUTOCAST_DTYPES, TrainConfig


def test_help_names_are_the_registered_ones() -> None:
    assert {name: method.help for name, method in METHODS.items()} == choices.METHODS
    assert {name: objective.help for name, objective in OBJECTIVES.items()} == choices.OBJECTIVES
    assert SCENARIOS == choices.SCENARIOS
    assert set(AUTOCAST_DTYPES) == set(choices.PRECISIONS)
    assert TrainConfig().precision == choices.DEFAULT_PRECISION
