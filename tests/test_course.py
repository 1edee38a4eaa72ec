"""The two TDT4265 course protocols on the real MNIST shipped with the repo."""

import pytest

from losslab.commands.cli import compose


# softmax: seeds and devices (the data order is drawn on the device) land between 91.3 and 91.7 %; the course
# states no accuracy, so the threshold is this protocol's own range less a margin
@pytest.mark.parametrize("experiment, threshold", [("tdt4265_logistic", 0.975), ("tdt4265_softmax", 0.91)])
def test_course_protocol_accuracy(experiment, threshold, tmp_path, trains):
    cfg = compose([f"experiment={experiment}", "trainer.progress=log"])
    summary = trains(cfg, tmp_path)
    assert summary["final"]["val/acc"] >= threshold
    if experiment == "tdt4265_logistic":
        assert summary["status"] == "early_stopped"  # patience 10 stops it before 50 epochs
        assert summary["epochs"] < 50
        # the first 20,000 training images filtered to 2s and 3s, and no shuffling
        assert not cfg.trainer.shuffle and cfg.model.init == "zeros"
