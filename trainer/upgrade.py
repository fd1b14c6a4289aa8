"""A schema-1 ``summary.json`` (the trainer before :mod:`trainer.record`) as a schema-2 record.

Schema 2 states what the report used to guess from each record: ``role``, the protocol's
``source``, ``budget_kind``, and a divergence at test as ``status: diverged`` with
``failure.phase``. For a schema-1 record they are filled here, once, from what it holds, by the
rules the report applied to it (the source: from its experiment config where that still states
the record's protocol); nothing else changes. ``tools/migrate_records.py`` writes the
result over the committed records, and the report reads a schema-1 record found elsewhere (a
run of an older checkout) through the same function.
"""
from __future__ import annotations

import copy
import math
import re

import yaml

from catalog import CONFIGS

from .record import SCHEMA_VERSION, budget_kind, role

# Words with which a schema-1 protocol said its choices were not a published protocol's.
NOT_PUBLISHED = ("our choice", "no published", "best of", "selected")
SELECTION_RECORD = re.compile(r"\((records/selection-[^)\s]+)\)")
# The failure of a schema-1 record that said "completed" with a non-finite test metric (the report's words for it).
TEST_DIVERGED = "test-time adaptation diverged (non-finite test metric)"


def source_of(experiment: str | None, protocol: str | None) -> dict:
    """The ``source`` of a schema-1 record: its experiment config's, where the checkout has that
    experiment with the same ``protocol`` text (the record ran the protocol the config states),
    else what the text implies (:func:`source_from_protocol`)."""
    path = CONFIGS / "experiment" / f"{experiment}.yaml"
    own = yaml.safe_load(path.read_text()) or {} if experiment and path.is_file() else {}
    if "source" in own and own.get("protocol") == protocol:
        return {"kind": None, "reference": None, "record": None, **own["source"]}
    return source_from_protocol(protocol)


def source_from_protocol(protocol: str | None) -> dict:
    """The ``source`` a schema-1 ``protocol`` text implies: ``selected`` where it names its
    selection record, ``stated`` where it says the choice was not published (or there is no text),
    else ``published`` with the text as the reference."""
    if not protocol:
        return {"kind": "stated", "reference": None, "record": None}
    found = SELECTION_RECORD.search(protocol)
    lead = None if protocol.startswith("no published") else re.split(r";| \(", protocol)[0]
    if found:
        return {"kind": "selected", "reference": lead, "record": found.group(1)}
    if any(w in protocol for w in NOT_PUBLISHED):
        return {"kind": "stated", "reference": lead, "record": None}
    return {"kind": "published", "reference": protocol, "record": None}


def _phase(d: dict, reason: str) -> str:
    if not reason.startswith("test-time adaptation"):
        return "training"
    return "validation" if d.get("kind") == "selection" else "test"


def upgrade(d: dict) -> dict:
    """A copy of the schema-1 record ``d`` in schema 2 (a schema-2 record is returned as it is)."""
    if d.get("schema_version") == SCHEMA_VERSION:
        return d
    d = copy.deepcopy(d)
    config = d.get("config") if isinstance(d.get("config"), dict) else {}
    test = d.get("test") if isinstance(d.get("test"), dict) else None
    mean = test.get("mean") if test else None
    if d.get("status") == "completed" and isinstance(mean, float) and not math.isfinite(mean):
        # Training finished but adapting to the test tasks blew up: a divergence, not a number.
        d.update(status="diverged", failure={"iteration": d.get("iterations_done"), "reason": TEST_DIVERGED,
                                             "last_metrics": {}})
    if isinstance(d.get("failure"), dict):
        failure = d["failure"]
        failure.setdefault("phase", _phase(d, str(failure.get("reason", ""))))
        if failure.get("stage") is None and isinstance(failure.get("anatomy"), dict):
            failure["stage"] = failure["anatomy"].get("stage")
    family = (config.get("algorithm") or {}).get("family")
    inner = d.get("inner") if isinstance(d.get("inner"), dict) else {}
    untrained = d.get("status") == "completed" and 0 in (d.get("meta_iterations"), d.get("iterations_done"))
    # Schema 1 had no family for the pretrained network: its variant, or no inner steps in training, said it.
    baseline = family == "baseline" or d.get("variant") == "pretrained" or inner.get("steps") == 0 or untrained
    planned = (config.get("profile_budget") or {}).get("meta_iterations")
    d.update(schema_version=SCHEMA_VERSION, family=family,
             role=role("baseline" if baseline else family, d.get("status"), d.get("iterations_done")),
             source=source_of(d.get("experiment"), d.get("protocol")),
             budget_kind=budget_kind(d.get("meta_iterations"), d.get("max_train_minutes"), planned))
    return d
