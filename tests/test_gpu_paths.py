"""The code paths a GPU run takes, checked on the CPU: bf16 autocast, channels_last conv models, and a step
loop that never waits on the host between evaluations."""

import pytest
import torch

from losslab.commands.cli import compose
from losslab.training import loop as train
from losslab.training.loop import Job, fit, fit_group
from losslab.training.runs import build
from losslab.training.runtime import memory_format, use_float32_math

SYNTH = ["dataset=synthetic", "trainer.progress=log", "trainer.device=cpu", "trainer.figures=false"]


def test_bf16_autocast_runs_the_model_in_bf16_and_the_loss_in_fp32(tmp_path, monkeypatch):
    seen = []
    original = torch.nn.functional.linear

    def linear(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.functional, "linear", linear)
    summary = fit(compose([*SYNTH, "model=fnn", "trainer.epochs=2", "trainer.precision=bf16"]), tmp_path)
    assert torch.bfloat16 in seen  # the layers ran under autocast
    assert summary["status"] == "completed" and summary["final"]["test/acc"] > 0.9  # 4 classes: chance is 0.25


def test_bf16_stacked_members_train(tmp_path):
    jobs = [Job(compose([*SYNTH, "trainer.epochs=2", "trainer.precision=bf16", f"optimizer.lr={lr}"]),
                tmp_path / str(i), {}, []) for i, lr in enumerate((0.5, 0.05))]
    summaries = fit_group(jobs)
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert all(s["final"]["test/acc"] > 0.9 for s in summaries)


@pytest.fixture
def tf32_flags():
    """torch's process-wide TF32 flags, restored after the test. Not monkeypatch.setattr: these attributes live
    behind the backend modules' __getattr__/__setattr__, and pytest 9's undo deletes them instead."""
    flags = (torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")
    saved = [getattr(module, name) for module, name in flags]
    yield flags
    for (module, name), value in zip(flags, saved):
        setattr(module, name, value)


def test_fp32_is_ieee_on_cuda_and_tf32_is_asked_for(tmp_path, caplog, tf32_flags):
    flags = tf32_flags
    for precision, expected in (("tf32", True), ("fp32", False), ("bf16", False), ("tf32", True)):
        use_float32_math(precision, torch.device("cuda"))
        assert [getattr(module, name) for module, name in flags] == [expected, expected], precision

    cfg = [*SYNTH, "trainer.epochs=1", "trainer.checkpoints=false"]
    fp32 = fit(compose([*cfg, "trainer.precision=fp32"]), tmp_path / "fp32")
    tf32 = fit(compose([*cfg, "trainer.precision=tf32"]), tmp_path / "tf32")
    assert "trainer.precision=tf32 needs a CUDA device; on cpu the run computes in fp32" in caplog.text
    assert tf32["final"]["test/loss"] == fp32["final"]["test/loss"]


def test_conv_models_go_channels_last_and_compute_the_same():
    data, _, lenet, _, _ = build(compose([*SYNTH, "model=lenet", "dataset.shape=[3,16,16]"]), torch.device("cpu"))
    _, _, linear, _, _ = build(compose(SYNTH), torch.device("cpu"))
    lenet = lenet.to(memory_format=torch.contiguous_format)  # the reference: NCHW
    assert memory_format(lenet) == torch.channels_last  # on every device
    assert memory_format(linear) == torch.contiguous_format
    x = data.train_x[:16]
    expected = lenet(x)
    nhwc = lenet.to(memory_format=torch.channels_last)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in nhwc.parameters() if p.ndim == 4)
    assert torch.allclose(nhwc(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5)


def host_reads_of_a_run(tmp_path, batch_size: int) -> int:
    cfg = compose([*SYNTH, "trainer.epochs=2", f"trainer.batch_size={batch_size}", "trainer.eval_batch_size=256",
                   "trainer.checkpoints=false"])
    reads = []
    with pytest.MonkeyPatch.context() as patch:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _original=original, **kwargs):
                reads.append(1)
                return _original(self, *args, **kwargs)

            patch.setattr(torch.Tensor, name, counted)
        fit(cfg, tmp_path / str(batch_size))
    return len(reads)


def test_the_step_loop_reads_nothing_back_between_evaluations(tmp_path, monkeypatch):
    """Host syncs (.item(), .tolist(), bool(tensor), ...) happen per evaluation, never per step: twice the steps
    with the same evaluations (one per epoch) and the same divergence checks read back exactly as often."""
    monkeypatch.setattr(train, "DIVERGENCE_CHECK_EVERY", 10**9)
    assert host_reads_of_a_run(tmp_path, 128) == host_reads_of_a_run(tmp_path, 64) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: device-resident batches on the GPU")
def test_cuda_run_keeps_the_data_on_the_device(tmp_path):
    summary = fit(compose(["dataset=synthetic", "trainer.progress=log", "trainer.device=cuda", "model=lenet",
                           "trainer.epochs=1", "trainer.precision=bf16"]), tmp_path)
    assert summary["device"].startswith("cuda") and summary["status"] == "completed"
