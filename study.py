"""Run a reviewer study: ``python study.py study=NAME [overrides]`` (see configs/study/)."""
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import studies


@hydra.main(config_path="configs", config_name="study", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        studies.check(cfg, out)
    except ValueError as e:  # bad configuration: one line, exit 2, no run folder left behind
        if out.is_dir() and all(p.name in (".hydra", "study.log") for p in out.iterdir()):
            shutil.rmtree(out)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        studies.run(cfg, out)
    except KeyboardInterrupt:  # study.json says interrupted; a study with its own folder continues its runs
        again = f"; the same command with hydra.run.dir={out} continues it" if cfg.study.get("run_dir") else ""
        print(f"interrupted → {out}/study.json{again}", file=sys.stderr)
        sys.exit(130)
    print(f"study {cfg.study.name}: completed → {out}/study.json")


if __name__ == "__main__":
    main()
