"""Train and evaluate one configuration: ``python train.py [overrides]`` (see README)."""
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from atomic import atomic_write_json
from trainer import ConfigError, train, validate
from trainer.records import read_json


def _remove_if_fresh(run_dir: Path) -> None:
    """Undo the folder Hydra made for a job that never started (only .hydra/ and a log)."""
    if run_dir.is_dir() and all(p.name in (".hydra", "train.log") for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)
        parent = run_dir.parent
        if parent.is_dir() and not any(p for p in parent.iterdir() if p.name != "multirun.yaml"):
            shutil.rmtree(parent)


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg)
    except ConfigError as e:
        _remove_if_fresh(run_dir)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        summary = train(cfg, run_dir)
    except ConfigError as e:  # found only once the run folder is read (resume with another config)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        # A crash is a result too: record it; in a multirun, the other jobs go on.
        record = read_json(run_dir / "summary.json") or {"run_dir": str(run_dir), "kind": "train"}
        record.update(status="failed", failure={"reason": f"{type(e).__name__}: {e}"})
        atomic_write_json(run_dir / "summary.json", record)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            print(f"failed: {type(e).__name__}: {e} → {run_dir}/summary.json", file=sys.stderr)
            return None
        raise
    print(f"{summary['status']}: {summary['label']} on {summary['dataset']} → {run_dir}/summary.json")
    if summary["status"] == "interrupted":  # stop here, also in a multirun: the user asked to stop
        print(f"interrupted: continue with resume=true hydra.run.dir={run_dir}", file=sys.stderr)
        sys.exit(130)
    test = summary.get("test") or {}
    return test.get("mean")


if __name__ == "__main__":
    main()
