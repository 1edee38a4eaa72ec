"""`losslab-eval <run dir or checkpoint> [split=test]`: recompute a finished run's metrics on a split.

The config comes from the run's `.hydra/config.yaml`; the weights from the checkpoint given, else the
run's final model (`best.pt` when early stopping was on, else `last.pt`). Results go to
`<run dir>/eval/<split>.json`; the training results are never touched.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf

from losslab.config import check
from losslab.errors import UserError
from losslab.fileio import write_json
from losslab.train import build, evaluate, pick_device


def locate(target: Path) -> tuple[Path, Path]:
    """(run dir, checkpoint) for a run dir or a checkpoint file inside one."""
    if not target.exists():
        raise UserError(f"{target} does not exist; pass a run dir (outputs/<name>/<time>) or a checkpoint in one.")
    if target.is_file():
        run_dir = target.parent.parent if target.parent.name == "checkpoints" else target.parent
        return run_dir, target
    config = OmegaConf.load(target / ".hydra" / "config.yaml") if (target / ".hydra" / "config.yaml").exists() else None
    name = "best.pt" if config is not None and config.trainer.get("patience") is not None else "last.pt"
    checkpoint = target / "checkpoints" / name
    if not checkpoint.exists():
        raise UserError(f"{target} has no checkpoints/{name}; is it a losslab run dir of a finished run?")
    return target, checkpoint


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="losslab-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", type=Path, help="a run dir, or a checkpoint file inside one")
    parser.add_argument("overrides", nargs="*", help="split=train|val|test (default test), device=...")
    args = parser.parse_args(argv)
    options = dict(o.split("=", 1) for o in args.overrides if "=" in o)
    unknown = set(options) - {"split", "device"} or {o for o in args.overrides if "=" not in o}
    if unknown:
        raise UserError(f"losslab-eval takes split=... and device=..., not {', '.join(sorted(unknown))}.")
    split = options.get("split", "test")
    if split not in ("train", "val", "test"):
        raise UserError(f"split={split} is not one of train, val, test.")

    run_dir, checkpoint = locate(args.target)
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.exists():
        raise UserError(f"{run_dir} has no .hydra/config.yaml, so the run's config is unknown; pass a losslab run dir.")
    cfg = OmegaConf.load(config_file)
    check(cfg)
    device = pick_device(options.get("device", "auto"))
    data, loss_fn, model, _, _ = build(cfg, device)
    try:
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
    except Exception as e:  # unreadable file, or weights of another model
        raise UserError(f"{checkpoint} does not fit the model of {config_file} ({str(e).splitlines()[0]}).") from e

    x, y = data.split(split)
    metrics = evaluate(model, loss_fn, x, y, cfg.trainer.eval_batch_size, None, cfg.trainer.precision)
    result = {f"{split}/{k}": v for k, v in metrics.items()} | {"checkpoint": str(checkpoint)}
    write_json(run_dir / "eval" / f"{split}.json", result)
    print(" ".join(f"{k} {v:.6g}" for k, v in result.items() if k != "checkpoint"))
    return result
