"""Train and evaluate one configuration: ``python train.py [overrides]`` (see README)."""
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from trainer import ConfigError, train, validate


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
    summary = train(cfg, run_dir)
    print(f"{summary['status']}: {summary['label']} on {summary['dataset']} → {run_dir}/summary.json")
    test = summary.get("test") or {}
    return test.get("mean")


if __name__ == "__main__":
    main()
