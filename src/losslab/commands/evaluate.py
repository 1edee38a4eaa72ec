"""`losslab-eval <run dir or checkpoint> [split=test] [--calibrate]`: recompute a finished run's metrics and figures
on a split.

The config comes from the run's `.hydra/config.yaml`; the model's and the loss's weights from the checkpoint
given, else the run's final model (`best.pt` when early stopping was on, else `last.pt`). The metrics are
computed as the run's own final evaluation computes them (same batches, trainer.limit_eval_batches and
precision), so they reproduce its numbers; the figures are drawn from the same evaluation. Results go to
`<run dir>/eval/<split>.json` and `<run dir>/eval/figures/`; the training results are never touched.

`--calibrate` also fits one temperature T on the validation split by NLL and reports the test metrics before and
after dividing the logits by it (losslab.evaluation.calibration), into `<run dir>/eval/calibration.json`. Every loss
has a temperature-scaled form: softmax(z/T) for ce, min_ent and mix_ent, (1 - σ(s/T), σ(s/T)) for bce (Platt scaling
with slope 1/T, no bias), σ(z/T) / Σ_k σ(z_k/T) for mbce. A run whose validation split is taken from the test set
(dataset.val_from=test) is refused: its temperature would be fitted on test images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf

from losslab.config import check
from losslab.errors import UserError
from losslab.evaluation.calibration import calibrate
from losslab.evaluation.evaluate import evaluate, split_logits
from losslab.fileio import write_json
from losslab.records.lock import busy, locked_by
from losslab.records.run_dir import CALIBRATION, final_checkpoint
from losslab.reporting.drawing import draw_plots
from losslab.reporting.run_figures import is_linear, read_rows, split_plots, weight_vectors, write_figures
from losslab.training.runs import build
from losslab.training.runtime import pick_device, use_float32_math


def locate(target: Path) -> tuple[Path, Path]:
    """(run dir, checkpoint) for a run dir or a checkpoint file inside one."""
    if not target.exists():
        raise UserError(f"{target} does not exist; pass a run dir (outputs/<name>/<time>) or a checkpoint in one.")
    if target.is_file():
        run_dir = target.parent.parent if target.parent.name == "checkpoints" else target.parent
        return run_dir, target
    config_file = target / ".hydra" / "config.yaml"
    config = OmegaConf.load(config_file) if config_file.exists() else OmegaConf.create({"trainer": {}})
    checkpoint = final_checkpoint(target, config)
    holder = locked_by(target)
    if holder is not None:
        raise busy(target, holder)
    if not checkpoint.exists():
        raise UserError(f"{target} has no checkpoints/{checkpoint.name}; is it a losslab run dir of a finished run?")
    return target, checkpoint


def templates_of(model, shape) -> tuple | None:
    """The weight templates (K, C, H, W) of a model linear in its input, with their names; None for others."""
    if not is_linear(type(model)):
        return None
    weights, names = weight_vectors(type(model), model.state_dict())
    return weights.reshape(-1, *shape), names


def load_weights(checkpoint: Path, model, loss_fn, config_file: Path, device) -> None:
    try:
        state = torch.load(checkpoint, map_location=device, weights_only=True)
    except Exception:  # torch's messages for a damaged file advise weights_only=False, which would not help
        raise UserError(f"{checkpoint} cannot be read: it is damaged or cut short, or not a checkpoint; restore "
                        f"it from a copy.") from None
    if not isinstance(state, dict) or not {"model", "loss"} <= state.keys():
        raise UserError(f"{checkpoint} is not a losslab checkpoint: it lacks the model's or the loss's weights.")
    try:
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
    except Exception as e:  # weights of another model or loss
        raise UserError(f"{checkpoint} does not fit the model and loss of {config_file} ({first_line(e)}).") from e


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_calibratable(cfg) -> None:
    if cfg.dataset.val_from == "test":
        raise UserError("--calibrate fits the temperature on the validation split, which this run takes from its test "
                        "set (dataset.val_from=test), so it would be fitted on test images; calibrate a run whose "
                        "validation split is carved from train.")


def calibrate_run(model, loss_fn, data, settings, run_dir: Path, checkpoint: Path) -> dict:
    """T fitted on the val split, the test metrics before and after it; written to <run dir>/eval/calibration.json
    and printed."""
    val, test = (split_logits(model, *data.split(split), settings) for split in ("val", "test"))
    result = calibrate(val, test, loss_fn)
    result |= {"calibration/probs": loss_fn.scaled_probs_formula, "checkpoint": str(checkpoint)}
    write_json(run_dir / CALIBRATION, result)
    print(f"temperature {result['calibration/temperature']:.4g}, fitted on val by NLL; probabilities "
          f"{loss_fn.scaled_probs_formula}")
    for metric in ("val/nll", "test/nll", "test/ece", "test/brier", "test/acc"):
        print(f"{metric} {result[metric]:.6g} -> {result[f'calibrated/{metric}']:.6g}")
    print(f"wrote {run_dir / CALIBRATION}")
    return result


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="losslab-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", type=Path, help="a run dir, or a checkpoint file inside one")
    parser.add_argument("overrides", nargs="*", help="split=train|val|test (default test), device=...")
    parser.add_argument("--calibrate", action="store_true",
                        help="also fit a temperature on the val split and report the test metrics before and after")
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
    if args.calibrate:
        check_calibratable(cfg)
    device = pick_device(options.get("device", "auto"))
    use_float32_math(cfg.trainer.precision, device)
    data, loss_fn, model, _, _ = build(cfg, device)
    load_weights(checkpoint, model, loss_fn, config_file, device)

    tr, (x, y) = cfg.trainer, data.split(split)
    evaluation = evaluate(model, loss_fn, x, y, tr)
    metrics = evaluation.metrics
    result = {f"{split}/{k}": v for k, v in metrics.items()} | {"checkpoint": str(checkpoint)}
    out_dir = run_dir / "eval"
    write_json(out_dir / f"{split}.json", result)
    predictions = evaluation.confidence.float().cpu().numpy(), evaluation.correct.cpu().numpy()
    plots = split_plots(templates_of(model, data.shape), predictions, split, read_rows(run_dir / "metrics.csv"))
    figures = write_figures(draw_plots(plots), out_dir / "figures")
    print(" ".join(f"{k} {v:.6g}" for k, v in result.items() if k != "checkpoint"))
    print(f"wrote {out_dir / f'{split}.json'} and {len(figures)} figures in {out_dir / 'figures'}")
    if args.calibrate:
        result["calibration"] = calibrate_run(model, loss_fn, data, tr, run_dir, checkpoint)
    return result
