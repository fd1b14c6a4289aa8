"""The run record's one schema (``trainer/record.py``): every committed record is one, the trainer
writes one (with its role, protocol source, budget kind and failure phase), a schema-1 record
migrates into one once, and SCHEMA.md is the model's."""
from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from reporting.records import RecordError, normalise_train
from trainer import compose, train
from trainer.record import SCHEMA_VERSION, Record, validate
from trainer.upgrade import upgrade

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "reports" / "records"
COMMITTED = sorted(RECORDS.rglob("summary.json"))
NEW_FIELDS = ("role", "family", "source", "budget_kind")  # what schema 2 added to schema 1


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _committed(rel: str) -> dict:
    return json.loads((RECORDS / rel / "summary.json").read_text())


def test_every_committed_record_is_one_of_the_model():
    assert COMMITTED
    for path in COMMITTED:
        d = json.loads(path.read_text())
        assert d["schema_version"] == SCHEMA_VERSION, f"{path}: run python tools/migrate_records.py"
        validate(d)  # raises with the first problem


@pytest.mark.parametrize("rel, role, kind, record", [
    ("reproduce-cpu/sinusoid/pretrained-s0", "baseline", "published", None),
    ("reproduce-cpu/omniglot_5w1s/maml-s0", "method", "published", None),
    ("reproduce-cpu/sinusoid/imaml-s1", "method", "selected", "records/selection-cpu/sinusoid/imaml"),
    ("reproduce-cpu/omniglot_5w1s/imaml_hf-s0", "method", "selected", "records/selection-cpu/omniglot_5w1s/imaml_hf"),
    ("large-cpu/omniglot_20w1s/imaml_hf-s0", "method", "stated", None),
])
def test_committed_records_say_their_role_and_source(rel, role, kind, record):
    d = _committed(rel)
    assert (d["role"], d["source"]["kind"], d["source"]["record"]) == (role, kind, record)
    if record:
        assert (ROOT / "reports" / record / "selection.json").is_file()


def test_every_experiment_states_a_valid_source():
    """A selected protocol names a selection record that exists; a published one its reference."""
    for path in sorted((ROOT / "configs" / "experiment").glob("*.yaml")):
        src = (yaml.safe_load(path.read_text()) or {}).get("source")
        if src is None:
            continue
        rec = Record.model_fields["source"].annotation.model_validate(src)
        if rec.kind == "selected":
            assert (ROOT / "reports" / rec.record / "selection.json").is_file(), path.name
        if rec.kind == "published":
            assert rec.reference, path.name


@pytest.mark.parametrize("overrides, role, kind, budget", [
    (["experiment=sinusoid_pretrained", "meta_iterations=2"], "baseline", "published", "iterations"),
    (["experiment=sinusoid_imaml", "meta_iterations=2", "max_train_minutes=5"], "method", "selected", "both"),
    (["experiment=sinusoid_maml", "profile=cpu", "meta_iterations=1500", "max_train_minutes=0.01"], "method",
     "published", "minutes"),
    (["algorithm=fomaml", "meta_iterations=0"], "baseline", "stated", "iterations"),  # an untrained θ₀
])
def test_the_trainer_writes_role_source_and_budget_kind(tmp_path, overrides, role, kind, budget):
    s = train(compose(overrides + ["eval.num_tasks=5", "eval.steps_list=[]", "eval.val_every=0"]), tmp_path)
    assert s["schema_version"] == SCHEMA_VERSION and s["status"] == "completed"
    assert (s["role"], s["source"]["kind"], s["budget_kind"]) == (role, kind, budget)
    assert json.loads((tmp_path / "summary.json").read_text())["role"] == role
    validate(json.loads((tmp_path / "summary.json").read_text()))


def test_the_trainer_decides_a_divergence_at_test(tmp_path):
    """Trained, then the test-time adaptation blows up: diverged, at test, said once in the record."""
    s = train(compose(["algorithm=fomaml", "meta_iterations=0", "inner_lr=1000", "eval.num_tasks=5",
                       "eval.steps_list=[]"]), tmp_path)
    assert s["status"] == "diverged" and s["failure"]["phase"] == "test"
    assert s["failure"]["stage"].startswith("test-time adaptation")
    row = normalise_train(json.loads((tmp_path / "summary.json").read_text()), "r")
    assert (row["status"], row["failure_phase"], row["role"]) == ("diverged", "test", "method")


def _as_schema_1(d: dict) -> dict:
    """A schema-2 record as the trainer before schema 2 wrote it."""
    old = {k: v for k, v in d.items() if k not in NEW_FIELDS}
    old["schema_version"] = 1
    if old.get("failure"):
        old["failure"] = {k: v for k, v in old["failure"].items() if k != "phase"}
        if old["failure"]["reason"].startswith("test-time adaptation diverged (non-finite"):
            old.update(status="completed", failure=None)  # it said "completed" with a NaN test mean
    return old


def test_migration_rewrites_schema_1_records_once(tmp_path):
    migrate = _tool("migrate_records")
    rels = ["reproduce-cpu/sinusoid/pretrained-s0", "reproduce-cpu/sinusoid/imaml-s0",
            "sweep-cpu/sinusoid/fomaml-K2-s0", "campaign-cpu/sinusoid/maml-s2"]
    for rel in rels:
        (tmp_path / rel).mkdir(parents=True)
        old = _as_schema_1(_committed(rel))
        (tmp_path / rel / "summary.json").write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
        shutil.copy(RECORDS / rel / "metrics.csv", tmp_path / rel / "metrics.csv")
    changed, failed = migrate.migrate_all([tmp_path])
    assert len(changed) == len(rels) and not failed
    first = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for rel in rels:  # the committed records are exactly their migration
        assert (tmp_path / rel / "summary.json").read_text() == (RECORDS / rel / "summary.json").read_text(), rel
    assert migrate.migrate_all([tmp_path]) == ([], [])
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == first


def test_a_schema_1_record_reads_as_its_migration():
    d = _committed("sweep-cpu/sinusoid/fomaml-K2-s0")
    old = _as_schema_1(d)
    assert old["status"] == "completed" and math.isnan(old["test"]["mean"])
    assert upgrade(old) == d and upgrade(d) is d
    a, b = normalise_train(old, "r"), normalise_train(d, "r")
    assert a.keys() == b.keys() and all(a[k] == b[k] or a[k] is b[k] for k in a if k not in ("per_task",))
    assert (b["status"], b["failure_phase"]) == ("diverged", "test")


def test_a_renamed_key_fails_loudly():
    d = _committed("reproduce-cpu/omniglot_5w1s/maml-s0")
    d["iterations"] = d.pop("iterations_done")
    with pytest.raises(RecordError, match="missing field 'iterations_done'"):
        normalise_train(d, "r")
    d = _committed("reproduce-cpu/omniglot_5w1s/maml-s0")
    d["timing"]["wall_s"] = d["timing"].pop("total_wall_s")
    with pytest.raises(ValueError, match="timing.total_wall_s"):
        validate(d)


def test_schema_md_is_generated_from_the_model():
    doc = _tool("schema_doc")
    text = doc.SCHEMA_MD.read_text()
    assert doc.render(text) == text, "reports/SCHEMA.md is stale: run python tools/schema_doc.py"
    for name in Record.model_fields:
        assert f"| `{name}` |" in text


def test_a_schema_1_source_is_its_experiment_configs_while_the_protocol_text_is_the_same():
    """The words guessed wrong where the config says otherwise: the suite's own Reptile protocol is a stated
    choice, and the release's (no protocol text) a published one; an older text is read by its words."""
    from trainer.upgrade import source_of

    fresh = yaml.safe_load((ROOT / "configs" / "experiment" / "omniglot_5w_reptile_fresh.yaml").read_text())
    assert source_of("omniglot_5w_reptile_fresh", fresh["protocol"])["kind"] == "stated"
    assert source_of("omniglot_5w_imaml_release", None)["kind"] == "published"
    assert source_of("omniglot_5w_reptile", "Nichol et al. 2018") == {
        "kind": "published", "reference": "Nichol et al. 2018", "record": None}
    assert source_of("sinusoid_reptile", "no published protocol: K = 10, the best of make sweep at 1 min")["kind"] \
        == "stated"
